"""The service's version, as /health, /api/info and the OpenAPI document report it, and as
packaging reads it (pyproject.toml takes it from here)."""

__version__ = "1.0.0"
