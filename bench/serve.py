"""Start the real server (gunicorn, as the README does) on a free loopback port.

Used by the benchmark's HTTP mode and by the tests that need a real gunicorn."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port that is free now and that the kernel will not hand out meanwhile.

    A port from bind(0) is ephemeral: between closing it here and the server binding
    it, any outgoing connection (nginx to its upstream, a client polling /readyz) may
    take it as its source port, and the server fails with "address in use". Ports
    below the ephemeral range are never given out that way."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    def __init__(self, model: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MODEL": str(model), "BIND": f"127.0.0.1:{self.port}", **env}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def n_workers(self) -> int:
        """Workers this server is started with (gunicorn.conf.py's default on this 2-core box: 2)."""
        return int(self.env.get("WEB_CONCURRENCY") or 2)

    command = [sys.executable, "-m", "gunicorn", "-c", "server/gunicorn.conf.py", "server:create_app()"]

    def start(self, wait: bool = True) -> Gunicorn:
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        # Read the log as it comes: a pipe nobody reads fills up, and then every process
        # that logs (a line per request) blocks on it.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> float:
        start = time.time()
        token = self.env.get("API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        while time.time() - start < timeout:
            assert self.proc.poll() is None, self.output()
            try:
                if requests.get(self.url + "/readyz", headers=headers, timeout=1).status_code == 200:
                    return time.time() - start
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still warming up
                pass
            time.sleep(0.05)
        raise AssertionError("server never became ready:\n" + self.output())

    def wait_workers(self, n: int, timeout: float = 30) -> list[int]:
        deadline = time.time() + timeout
        while len(self.workers()) != n:
            assert time.time() < deadline, f"{len(self.workers())} workers, expected {n}"
            time.sleep(0.05)
        time.sleep(0.5)  # forked; give the newest one time to load and warm its session
        return self.workers()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        """The whole log, once the server has stopped (stops it if need be)."""
        if self.proc.poll() is None:
            self.stop()
        self._reader.join(timeout=10)
        return "".join(self.lines)

    def master(self):
        import psutil

        return psutil.Process(self.proc.pid)

    def workers(self) -> list[int]:
        return sorted(c.pid for c in self.master().children())

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Front(Gunicorn):
    """The image's CMD, `python -m server front`: nginx on the URL, gunicorn behind it."""

    command = [sys.executable, "-m", "server", "front"]

    def __init__(self, model: Path, **env: str):
        super().__init__(model, **env)
        self.env.update(FRONT_BIND=f"127.0.0.1:{self.port}", BIND=f"127.0.0.1:{free_port()}")

    def master(self):
        return next(c for c in super().master().children() if "gunicorn" in " ".join(c.cmdline()))
