"""gunicorn settings for the kiosk: `gunicorn -c server/gunicorn.conf.py 'server:create_app()'`.

Every value comes from `server.config.Config`, the same frozen settings the app reads
(README, "Settings"). No preload_app: each worker builds its onnxruntime session after
the fork, so no thread pool is shared.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prometheus multiprocess mode: workers write samples here, /metrics merges them. Set
# before anything imports prometheus_client (importing `server` below does).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ecosort-metrics-")

from server.config import Config  # noqa: E402

CONFIG = Config.from_env()
bind = CONFIG.bind
workers = CONFIG.workers
worker_class = "gthread"
threads = CONFIG.gunicorn_threads
timeout = CONFIG.gunicorn_timeout
graceful_timeout = CONFIG.gunicorn_graceful_timeout
keepalive = CONFIG.gunicorn_keepalive
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
backlog = 256
accesslog = CONFIG.access_log or None
# One JSON object a line. The path without its query string: no token, no junk in the log.
access_log_format = ('{"time": "%(t)s", "request_id": "%({x-request-id}o)s", "method": "%(m)s", '
                     '"path": "%(U)s", "status": %(s)s, "latency_ms": %(M)s, "bytes": %(B)s}')
errorlog = "-"
loglevel = CONFIG.log_level
proc_name = "ecosort"
# No control socket: nothing about a running kiosk server is changed at run time.
control_socket_disable = True

SECRET = re.compile(r"(?i)(token=)[^&\s'\"]*|(authorization:\s*bearer\s+)\S+|(x-api-token:\s*)\S+")


class Redact(logging.Filter):
    """No credential in any log line: gunicorn logs a malformed request line verbatim."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = SECRET.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "[redacted]", message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answers (bad request line, framing, headers) as the API's JSON
    4xx instead of an HTML page. An unknown transfer coding is the client's error too."""
    from gunicorn import util

    status = 400 if status_int == 501 else status_int
    code = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
            431: "headers_too_large"}.get(status, "internal_error" if status >= 500 else "bad_request")
    text = "the request is malformed" if status < 500 else "internal error"
    body = json.dumps({"error": {"code": code, "message": text}}).encode()
    head = (f"HTTP/1.1 {status} {reason if status == status_int else 'Bad Request'}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin1")
    util.write_nonblock(sock, head + body)


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


def post_worker_init(worker):
    from gunicorn import util
    from gunicorn.workers import gthread

    # A client that stalls mid-request would block a gthread thread forever: gthread makes
    # accepted sockets blocking with no timeout. Give each connection a read timeout.
    original = gthread.TConn.init

    def init_with_timeout(self):
        original(self)
        self.sock.settimeout(CONFIG.client_timeout)

    gthread.TConn.init = init_with_timeout
    util.write_error = json_error
    # SIGTERM (graceful stop, or a HUP replacing workers with a new bundle): say so on /readyz.
    import signal

    from server.app import start_draining

    exit_handler = worker.handle_exit

    def drain_then_exit(sig, frame):
        start_draining(worker.wsgi)
        exit_handler(sig, frame)

    signal.signal(signal.SIGTERM, drain_then_exit)
    for name in ("gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(Redact())
    logging.getLogger("server").setLevel(logging.INFO)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if path.startswith(tempfile.gettempdir()) and "ecosort-metrics-" in path:
        shutil.rmtree(path, ignore_errors=True)
