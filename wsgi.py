"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""
import sys

from kimi_backend import create_app
from kimi_backend.config.parsers import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # One sentence naming the variable, not a traceback. Exit status 4 is gunicorn's "app
    # failed to load": its master then stops, rather than restarting the worker forever (an
    # unreachable USAGE_DATABASE_URL is found only here, in the worker).
    print(f"kimi-backend: configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(4)

if __name__ == "__main__":
    # Development server with reload (`make dev`), the counterpart of the original `npm run dev`.
    app.run(host="127.0.0.1", port=app.config["SETTINGS"].port, debug=True, use_reloader=True, threaded=True)
