"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""
import sys

from kimi_backend import create_app
from kimi_backend.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # One sentence naming the variable, not a traceback.
    print(f"kimi-backend: configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(1)

if __name__ == "__main__":
    # Development server with reload (`make dev`), the counterpart of the original `npm run dev`.
    app.run(host="127.0.0.1", port=app.config["SETTINGS"].port, debug=True, use_reloader=True, threaded=True)
