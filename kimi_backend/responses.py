"""The app's response class."""
from __future__ import annotations

from flask import Response


class KimiResponse(Response):
    """Flask's response, handing the server its own headers when werkzeug's
    `get_wsgi_headers` would change nothing in them. werkzeug always copies them first, adding
    each again through its checks (five Python calls a header, about seventy on a chat reply,
    counted with cProfile), then fixes a Location or Content-Location, drops Content-Length
    where a status forbids it and works out a missing one; a response that needs none of that
    (every JSON reply and every stream of ours) gets its headers as they are. So a caller must
    only read what this returns, as werkzeug's `get_wsgi_response` does (it lists them)."""

    def get_wsgi_headers(self, environ):
        status = self.status_code
        if 200 <= status and status not in (204, 304):
            length = None
            for name, value in self.headers:
                lowered = name.lower()
                if lowered == "content-length":
                    length = value
                elif lowered == "location" or lowered == "content-location":
                    break  # werkzeug rewrites these
            else:
                if length is not None or not (self.automatically_set_content_length and self.is_sequence):
                    return self.headers
        return super().get_wsgi_headers(environ)
