"""Moonshot AI (Kimi) upstream: HTTP client, SSE parsing and an offline simulator."""
