# Kimi Backend: gunicorn (gevent) on a slim Python image, as a non-root user.
#   docker build -t kimi-backend .
#   docker run -d --name kimi-backend -p 3000:3000 --env-file .env kimi-backend
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NODE_ENV=production \
    DOTENV_PATH=""

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

# Everything not excluded by .dockerignore (no .env, tests or VCS data), owned by root:
# the service's user can read its code but not change it.
COPY . .

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kimi \
    && mkdir /app/data && chown 10001:10001 /app/data
# The usage ledger (SQLite) in the one directory the service may write: mount a volume there
# to keep it across containers (or set USAGE_DATABASE_URL=postgresql://...).
ENV USAGE_DATABASE_URL=sqlite:////app/data/kimi-usage.sqlite3
VOLUME ["/app/data"]
USER 10001:10001

EXPOSE 3000
# Liveness only (readiness, which asks Moonshot, is for orchestrators: GET /health/ready).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '3000'), timeout=4)"

# serve.py checks the settings and becomes gunicorn, which stops on SIGTERM, letting in-flight
# streams finish for GRACEFUL_TIMEOUT_S: give `docker stop` at least that long (docker stop -t 35).
STOPSIGNAL SIGTERM
CMD ["python", "serve.py"]
