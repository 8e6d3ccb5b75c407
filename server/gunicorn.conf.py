"""gunicorn settings for the kiosk: `gunicorn -c server/gunicorn.conf.py 'server:create_app()'`.

Every value comes from `server.config.Config`, the same frozen settings the app reads
(README, "Settings"). No preload_app: each worker builds its onnxruntime session after
the fork, so no thread pool is shared.
"""

import ctypes
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


def one_malloc_arena() -> None:
    """Frames decode into buffers of many megabytes on whichever thread serves them, and
    glibc keeps what a thread frees in that thread's own arena: a worker's memory would
    grow to its threads times the largest frame and stay there. One arena shares the
    freed memory among the threads (a smaller mmap threshold did too, but cost time on
    every request: docs/serving.md). Set in the master, kept by every fork."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator, its rules
        return
    libc.mallopt(-8, 1)  # M_ARENA_MAX


one_malloc_arena()

# MODEL as the operator gave it (maybe a symlink); MODEL itself is then pinned to what was checked.
REQUESTED = "ECOSORT_MODEL_REQUESTED"
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
    logging.basicConfig(level=CONFIG.log_level.upper())
    json_logs()
    os.environ.setdefault(REQUESTED, str(CONFIG.model))
    ok, line = check_model(os.environ[REQUESTED])
    if not ok:
        print(line, file=sys.stderr, flush=True)
        sys.exit(2)
    serve(server, line)


def on_reload(server):
    """HUP: workers are replaced one by one (the old ones drain). The bundle MODEL names now
    (a symlink moved to a new versioned bundle) is checked first; a bad one is refused and
    the new workers load the bundle served before."""
    json_logs()  # gunicorn has just set its log handlers up again
    ok, line = check_model(os.environ[REQUESTED])
    if ok:
        serve(server, line)
    else:
        server.log.error("model swap refused, still serving %s: %s", os.environ["MODEL"], line)


def check_model(path: str) -> tuple[bool, str]:
    # In a child process: onnxruntime is never initialised in the master we fork from.
    check = subprocess.run([sys.executable, "-m", "server", "check", path], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if check.returncode != 0:
        return False, (check.stderr.strip().splitlines() or ["ecosort: cannot start: model check failed"])[-1]
    return True, check.stdout.strip()


def serve(server, line: str) -> None:
    """Workers forked from now on load this bundle: MODEL resolved, so a later move of the
    link cannot hand them an unchecked one."""
    os.environ["MODEL"] = os.path.realpath(os.environ[REQUESTED])
    server.log.info("%s", line)


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
    json_logs()
    for name in ("", "gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(Redact())
    logging.getLogger("server").setLevel(CONFIG.log_level.upper())


def json_logs():
    """Application lines as JSON (server.logs); the access log already is, by its format."""
    from server.logs import use_json

    use_json(logging.getLogger(), logging.getLogger("gunicorn.error"))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if path.startswith(tempfile.gettempdir()) and "ecosort-metrics-" in path:
        shutil.rmtree(path, ignore_errors=True)
