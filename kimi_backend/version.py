"""The service's version, as /health, /api/info and the OpenAPI document report it
(pyproject.toml carries the same number for packaging)."""

__version__ = "1.0.0"
