# The kiosk image: nginx in front of the server, the shipped model bundle, nothing else
# (no torch). tests/test_docker.py replays this recipe without a Docker engine.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian's nginx holds slow and idle clients and sheds overload (server/front.py).
RUN apt-get update && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements-serve.txt ./
RUN pip install -r requirements-serve.txt

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ecosort
COPY server/ server/
COPY models/ models/
# Root owns the code and the model; the service user can read, never write them.
RUN chmod -R a-w,a+rX /app

# nginx on 8000 for the world, gunicorn on loopback behind it.
ENV MODEL=/app/models/ecosort.json \
    FRONT_BIND=0.0.0.0:8000 \
    BIND=127.0.0.1:8001
USER ecosort
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('FRONT_BIND', ':8000').rsplit(':', 1)[1]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
CMD ["python", "-m", "server", "front"]
