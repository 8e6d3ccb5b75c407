"""Slow and idle clients against the kiosk's front (server/nginx.conf before gunicorn):
normal requests are still answered quickly. The long form, as the README's robustness
table reports it: `PROXY_ATTACK_S=60 python -m pytest tests/test_proxy.py -k slowloris -o log_cli=true
--log-cli-level=INFO`."""

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.serve import ROOT, Gunicorn, free_port
from tests.helpers import solid

pytestmark = pytest.mark.skipif(not shutil.which("nginx"), reason="tests/run.sh installs Debian's nginx")
log = logging.getLogger(__name__)
ATTACK_S = float(os.environ.get("PROXY_ATTACK_S", "8"))
SLOW, IDLE = 50, 300


def nginx_conf(folder: Path, listen: int, upstream: int) -> Path:
    text = (ROOT / "server" / "nginx.conf").read_text()
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{listen};")
    text = text.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{upstream};")
    text = text.replace("pid /run/ecosort-nginx.pid;", f"pid {folder}/nginx.pid;")
    text = text.replace("http {", f"http {{\n    client_body_temp_path {folder}/body;\n"
                        f"    proxy_temp_path {folder}/proxy;", 1)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


@pytest.fixture
def front(tiny_bundle, tmp_path):
    with Gunicorn(tiny_bundle, WEB_CONCURRENCY="2", GUNICORN_THREADS="4") as g:
        port = free_port()
        conf = nginx_conf(tmp_path, port, g.port)
        proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
                                stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 10
        while True:
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.1)
        yield port, url
        proc.terminate()
        proc.wait(timeout=10)


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


def test_slowloris_and_idle_connections_do_not_block_normal_requests(front):
    port, url = front
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


def test_the_front_refuses_in_json(front):
    port, url = front
    big = requests.post(url + "/v1/classify", data=b"\0" * (11 * 1024 * 1024), headers={"Content-Type": "image/png"})
    assert big.status_code == 413 and json.loads(big.text)["error"]["code"] == "payload_too_large"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer, answer[:300]

