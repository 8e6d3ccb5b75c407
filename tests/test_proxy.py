"""The kiosk's front (`python -m server front`: server/nginx.conf before gunicorn) against
slow and idle clients, and under overload. The long form of the slow-client test, as the
README's robustness table reports it: `PROXY_ATTACK_S=60 python -m pytest tests/test_proxy.py
-k slowloris -o log_cli=true --log-cli-level=INFO`; of the overload, `python -m bench load
--front --concurrency 64`."""

import json
import logging
import os
import shutil
import socket
import threading
import time

import pytest
import requests

from bench import http
from bench.frames import camera_frame
from bench.serve import Front
from server import front
from server.config import Config
from tests.helpers import solid

pytestmark = pytest.mark.skipif(not shutil.which("nginx"), reason="tests/run.sh installs Debian's nginx")
log = logging.getLogger(__name__)
ATTACK_S = float(os.environ.get("PROXY_ATTACK_S", "8"))
SLOW, IDLE = 50, 300


@pytest.fixture
def served(tiny_bundle):
    with Front(tiny_bundle, WEB_CONCURRENCY="2", GUNICORN_THREADS="4") as f:
        yield f.port, f.url


def slowloris(port: int, stop: threading.Event, sockets: list) -> None:
    """A request header sent one byte at a time, never finished."""
    sock = socket.create_connection(("127.0.0.1", port))
    sockets.append(sock)
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-Padding: "
    sock.sendall(head)
    while not stop.is_set():
        try:
            sock.sendall(b"a")
        except OSError:
            # cut off by client_header_timeout: come back, as an attacker would
            sock = socket.create_connection(("127.0.0.1", port))
            sockets.append(sock)
            sock.sendall(head)
        stop.wait(1.0)


def test_slowloris_and_idle_connections_do_not_block_normal_requests(served):
    port, url = served
    stop, sockets = threading.Event(), []
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(IDLE)]
    attackers = [threading.Thread(target=slowloris, args=(port, stop, sockets), daemon=True) for _ in range(SLOW)]
    for t in attackers:
        t.start()
    time.sleep(1)
    latencies, statuses = [], []
    body = solid((0, 255, 0))
    started = time.time()
    try:
        while time.time() - started < ATTACK_S:
            t = time.perf_counter()
            r = requests.post(url + "/v1/classify", data=body, headers={"Content-Type": "image/png"}, timeout=5)
            latencies.append(time.perf_counter() - t)
            statuses.append(r.status_code)
            assert r.json()["label"] == "glass"
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
            time.sleep(0.05)
    finally:
        stop.set()
        for s in idle + sockets:
            s.close()
    latencies.sort()
    log.info("%d slowloris + %d idle connections, %.0f s: %d requests, statuses %s, p50 %.3f s, p99 %.3f s, "
             "max %.3f s", SLOW, IDLE, ATTACK_S, len(statuses), sorted(set(statuses)), latencies[len(latencies) // 2],
             latencies[int(0.99 * (len(latencies) - 1))], latencies[-1])
    assert set(statuses) == {200} and len(statuses) >= 10
    assert latencies[-1] < 2.0, latencies[-1]


def test_overload_is_answered_in_time_or_refused_at_once(tiny_bundle):
    """48 clients against 2 threads: past what gunicorn works on at once the front says
    503 with Retry-After at once, and no answer waits behind a queue."""
    with Front(tiny_bundle, WEB_CONCURRENCY="1", GUNICORN_THREADS="2") as f:
        frame = camera_frame((1280, 720))
        http.load(f.url, frame, 20, 2)
        result = http.load(f.url, frame, 600, 48, timeout_s=60, retry_after=True)
    log.info("overload: %s", result)
    statuses, answered, refused = result["statuses"], result["latency_ms"], result["refused_ms"]
    assert set(statuses) == {"200", "503"} and statuses["200"] >= 50, statuses
    assert result["refused_without_retry_after"] == 0
    assert answered["max"] < 1000 * Config().queue_timeout_s, answered
    assert refused["p99"] < 250, refused


def test_the_front_refuses_in_json(served):
    port, url = served
    big = requests.post(url + "/v1/classify", data=b"\0" * (11 * 1024 * 1024), headers={"Content-Type": "image/png"})
    assert big.status_code == 413 and json.loads(big.text)["error"]["code"] == "payload_too_large"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer, answer[:300]


def test_front_stops_when_gunicorn_cannot_start(tmp_path):
    """A bad bundle stops gunicorn before any worker forks; the front stops nginx too and
    exits non-zero, so the container's supervisor sees the failure."""
    server = Front(tmp_path / "missing.json").start(wait=False)
    code = server.proc.wait(timeout=60)
    log_text = server.output()
    assert code != 0 and "cannot start" in log_text, log_text
    with pytest.raises(OSError):  # nginx is gone with it
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_render_finds_every_line_it_changes(tmp_path):
    with pytest.raises(ValueError, match="max_conns"):
        front.render("listen 8000;\npid /x.pid;\nserver 127.0.0.1:8001;\n", "127.0.0.1:1", "127.0.0.1:2", 8, tmp_path)
    text = front.render(front.CONF.read_text(), "0.0.0.0:9000", "127.0.0.1:9001", 3, tmp_path)
    assert "listen 0.0.0.0:9000;" in text and "server 127.0.0.1:9001 max_conns=3 " in text
    assert f"pid {tmp_path}/nginx.pid;" in text and f"proxy_temp_path {tmp_path}/proxy;" in text
