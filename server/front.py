"""`python -m server front`: Debian's nginx in front of gunicorn, one container (the image's CMD).

nginx (server/nginx.conf) listens on FRONT_BIND, holds slow and idle clients, and lets at
most `workers x threads` whole requests reach gunicorn at once; one more is refused at
once with 503 and Retry-After instead of queueing behind them. gunicorn listens on BIND
(loopback). Either process exiting stops the other, so the container's supervisor sees one
failure and restarts both.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import ROOT, Config

log = logging.getLogger(__name__)
CONF = Path(__file__).with_name("nginx.conf")
# nginx creates every compiled-in temp folder at start; Debian's are root's.
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def render(text: str, listen: str, upstream: str, max_conns: int, folder: Path) -> str:
    """server/nginx.conf with this run's addresses, admission limit and writable paths."""
    for pattern, value in ((r"listen [^;]+;", f"listen {listen};"),
                           (r"server 127\.0\.0\.1:\d+ max_conns=\d+", f"server {upstream} max_conns={max_conns}"),
                           (r"pid [^;]+;", f"pid {folder}/nginx.pid;")):
        text, n = re.subn(pattern, value, text, count=1)
        if n != 1:
            raise ValueError(f"{CONF.name} has no line matching {pattern!r}")
    temps = "".join(f"\n    {name}_temp_path {folder}/{name};" for name in TEMP_PATHS)
    return text.replace("http {", "http {" + temps, 1)


def write_conf(config: Config, folder: Path) -> Path:
    if not config.front_bind:
        raise ValueError("FRONT_BIND is not set (the address nginx listens on, e.g. 0.0.0.0:8000)")
    path = folder / "nginx.conf"
    path.write_text(render(CONF.read_text(), config.front_bind, config.bind,
                           config.workers * config.gunicorn_threads, folder))
    return path


def run(config: Config) -> int:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    folder = Path(tempfile.mkdtemp(prefix="ecosort-front-"))
    conf = write_conf(config, folder)
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "server" / "gunicorn.conf.py"),
                                 "server:create_app()"], cwd=ROOT)
    front = subprocess.Popen([nginx, "-e", "stderr", "-p", str(folder), "-c", str(conf), "-g", "daemon off;"])
    children = {gunicorn.pid: gunicorn, front.pid: front}
    asked = []

    def stop(sig: int, _frame) -> None:
        asked.append(sig)
        gunicorn.send_signal(signal.SIGTERM)  # drains: in-flight requests finish
        front.send_signal(signal.SIGQUIT)  # nginx's graceful stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: gunicorn.send_signal(signal.SIGHUP))  # model hot swap
    pid, status = os.wait()
    first = children.pop(pid)
    code = os.waitstatus_to_exitcode(status)
    other = next(iter(children.values()))
    if other.poll() is None:
        name = "gunicorn" if first is gunicorn else "nginx"
        log.log(logging.INFO if asked else logging.WARNING, "%s exited (%s): stopping the other", name, code)
        stop(signal.SIGTERM, None)
        try:
            other.wait(timeout=config.gunicorn_graceful_timeout + 5)
        except subprocess.TimeoutExpired:
            other.kill()
            other.wait()
    shutil.rmtree(folder, ignore_errors=True)
    return code if code else abs(other.returncode or 0)
