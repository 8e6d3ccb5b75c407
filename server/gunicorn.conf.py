"""gunicorn settings for the kiosk: `gunicorn -c server/gunicorn.conf.py 'server:create_app()'`.

Defaults measured on the 2-core kiosk box (README, "Serving defaults"). No preload_app:
each worker builds its onnxruntime session after the fork, so no thread pool is shared.
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prometheus multiprocess mode: workers write samples here, /metrics merges them. Set
# before anything imports prometheus_client (importing `server` below does).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ecosort-metrics-")

from server.config import default_workers  # noqa: E402

bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY") or default_workers())
worker_class = "gthread"
# Threads overlap one request's decode (Pillow drops the GIL) with another's inference.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# A stalled client cannot hold a worker thread for long: gthread reads requests in its
# event loop, and a request that is being read is dropped after keepalive/timeout.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
backlog = 256
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
proc_name = "ecosort"
# No control socket: nothing about a running kiosk server is changed at run time.
control_socket_disable = True


def on_starting(server):
    """Check the bundle before any worker forks: a bad one stops the start with one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # In a child process: onnxruntime is never initialised in the master we fork from.
    check = subprocess.run([sys.executable, "-m", "server", "check"], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines() or ["ecosort: cannot start: model check failed"]
        print(lines[-1], file=sys.stderr, flush=True)
        sys.exit(2)
    server.log.info("%s", check.stdout.strip())


# A client that stalls mid-request (slowloris, a kiosk losing Wi-Fi) would block a gthread
# thread forever: gthread makes accepted sockets blocking with no timeout. Give each
# connection a read timeout instead; the stalled connection is closed, the thread freed.
client_timeout = float(os.environ.get("CLIENT_TIMEOUT", "10"))


def post_worker_init(worker):
    from gunicorn.workers import gthread

    original = gthread.TConn.init

    def init_with_timeout(self):
        original(self)
        self.sock.settimeout(client_timeout)

    gthread.TConn.init = init_with_timeout
    logging.getLogger("server").setLevel(logging.INFO)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if path.startswith(tempfile.gettempdir()) and "ecosort-metrics-" in path:
        shutil.rmtree(path, ignore_errors=True)
