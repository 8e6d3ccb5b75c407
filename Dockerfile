# The kiosk image: the server, the shipped model bundle, nothing else (no torch).
# tests/test_docker.py replays this recipe without a Docker engine.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements-serve.txt ./
RUN pip install -r requirements-serve.txt

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ecosort
COPY server/ server/
COPY models/ models/
# Root owns the code and the model; the service user can read, never write them.
RUN chmod -R a-w,a+rX /app

ENV MODEL=/app/models/ecosort.json \
    BIND=0.0.0.0:8000
USER ecosort
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BIND', ':8000').rsplit(':', 1)[1]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
CMD ["gunicorn", "-c", "server/gunicorn.conf.py", "server:create_app()"]
