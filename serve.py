"""Starts the service: `python serve.py [gunicorn options]`, from the project's directory (what
`make run`, the Dockerfile and the systemd unit run). It checks the settings the way
gunicorn.conf.py does (by running that file), then becomes `gunicorn -c gunicorn.conf.py
wsgi:app` with the environment it was given (exec: the same process, so systemd and Docker
see gunicorn's master as the service).

Why not gunicorn straight away: gunicorn reads WEB_CONCURRENCY from the process environment
with a bare `int()` as it is imported, before gunicorn.conf.py runs, so a value that is not a
whole number (in a systemd EnvironmentFile, `docker run --env-file`) stopped it with a Python
traceback instead of our one sentence. Started directly, gunicorn still works as before.
"""
import os
import runpy
import sys

CONFIG = "gunicorn.conf.py"


def main(argv: list[str]) -> None:
    # gunicorn.conf.py loads .env into os.environ; gunicorn must get the environment as given
    # (it loads .env itself again, without overriding what the environment sets).
    environ = dict(os.environ)
    runpy.run_path(CONFIG)  # a bad setting: one sentence on stderr, exit status 1
    os.execve(sys.executable, [sys.executable, "-m", "gunicorn", "-c", CONFIG, *argv, "wsgi:app"], environ)


if __name__ == "__main__":
    main(sys.argv[1:])
