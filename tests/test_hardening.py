"""Hardening, round two (issue 19): each finding reproduced against the real server."""

import io
import logging
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from bench.serve import Gunicorn
from server import create_app
from server.feedback import store
from tests.helpers import solid

TOKEN = "s3cret-token-xyz"
log = logging.getLogger(__name__)
# What one frame of MAX_PIXELS (a float TIFF the largest) adds to a worker at its peak,
# with room; four at once add four times it (docs/serving.md, "Robustness of the service").
PEAK_GROWTH_MB = 700


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    with Gunicorn(tiny_bundle, WEB_CONCURRENCY="1", GUNICORN_THREADS="2", MAX_UPLOAD_MB="0.05",
                  API_TOKEN=TOKEN, ACCESS_LOG="-") as g:
        yield g


HEAD = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n"


@pytest.mark.parametrize("value", ["²", "①", "٣", "0", "99", "-1"])
def test_top_k_unicode_digits_are_a_400(client, value):
    for route in ("/v1/classify", "/v1/classify/batch"):
        r = client.post(f"{route}?top_k={value}", data=solid((255, 0, 0)), content_type="image/png")
        assert r.status_code == 400 and r.json["error"]["code"] == "bad_top_k"


@pytest.mark.parametrize("framing", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # not a hex size
    b"5\r\nabcdeXX0\r\n\r\n",  # chunk without its CRLF terminator
    b"3;\x01junk\r\nabc\r\n0\r\n\r\n",  # junk chunk extension
    b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",  # malformed trailer
])
def test_malformed_chunked_framing_is_a_json_400(server, framing):
    answer = raw(server.port, (HEAD + "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
                 + framing)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    assert b"application/json" in answer and b"<html" not in answer.lower()


def test_unknown_transfer_coding_is_a_json_400(server):
    answer = raw(server.port, (HEAD + "Transfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc").encode())
    assert answer.startswith(b"HTTP/1.1 400") and b'"code": "bad_request"' in answer, answer[:300]


def test_chunked_body_over_the_limit_is_a_413(server):
    big = solid((255, 0, 0)) + b"\0" * 80_000  # a valid PNG followed by padding: over 0.05 MB
    answer = raw(server.port, (HEAD + "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
                 + chunked(big))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    ok = raw(server.port, (HEAD + "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
             + chunked(solid((255, 0, 0))))
    assert ok.startswith(b"HTTP/1.1 200") and b'"label":"cardboard"' in ok, ok[:300]


def test_no_token_in_any_log_line(server):
    # a malformed request line, which gunicorn logs whole
    raw(server.port, f"GET /?token={TOKEN}\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    requests.get(f"{server.url}/?token={TOKEN}", timeout=5)
    requests.get(f"{server.url}/readyz", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    time.sleep(0.3)
    log = server.output()
    assert "Invalid request" in log and "[redacted]" in log
    assert TOKEN not in log
    import json

    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
    access = [a for a in lines if "path" in a]  # gunicorn's access lines; the app's have a logger
    assert access and all("logger" not in a for a in access)
    assert any(a["path"] == "/readyz" and a["status"] == 200 and len(a["request_id"]) == 32 for a in access)
    assert all(isinstance(a["latency_ms"], int) for a in access)


def test_query_token_only_for_the_page_and_only_once(tiny_bundle):
    client = create_app({"model": tiny_bundle, "api_token": TOKEN}).test_client()
    assert client.get(f"/?token={TOKEN}").status_code == 200
    assert client.get(f"/readyz?token={TOKEN}").status_code == 401
    assert client.get(f"/?token={TOKEN}&token=wrong").status_code == 401
    assert client.get(f"/?token=wrong&token={TOKEN}").status_code == 401


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_extreme_aspect_ratio_is_refused_before_any_resize(client):
    r = client.post("/v1/classify", data=png(16, 100_000), content_type="image/png")
    assert r.status_code == 422 and r.json["error"]["code"] == "extreme_aspect_ratio"
    assert client.post("/v1/classify", data=png(64, 400), content_type="image/png").status_code == 200


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_worker_peak_memory_is_bounded_whatever_arrives(tiny_bundle):
    """Four threads each handed a frame of the most pixels allowed, three times over, and a
    batch of them, then deep frames: one frame decodes at a time (DECODE_PIXELS), its
    threads share one malloc arena, and deep pixels are scaled a band at a time, so the
    worker's peak stays near one frame's, not four."""
    frame = png(7744, 5164)  # 40 MP of one colour: 116 KB on the wire, 120 MB decoded
    with Gunicorn(tiny_bundle, WEB_CONCURRENCY="1", GUNICORN_THREADS="4") as g:
        pid = g.workers()[0]
        before = peak_rss_mb(pid)
        statuses = []

        def post() -> None:
            statuses.append(requests.post(g.url + "/v1/classify", data=frame, headers={"Content-Type": "image/png"},
                                          timeout=60).status_code)

        for _ in range(3):
            clients = [threading.Thread(target=post) for _ in range(4)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
        files = {f"f{i}": (f"{i}.png", frame, "image/png") for i in range(8)}
        statuses.append(requests.post(g.url + "/v1/classify/batch", files=files, timeout=60).status_code)
        for data, kind in deep_frames(7744, 5164):  # scaled to 8 bits a band at a time
            statuses.append(requests.post(g.url + "/v1/classify", data=data, headers={"Content-Type": kind},
                                          timeout=60).status_code)
        peak = peak_rss_mb(pid)
    log.info("worker peak RSS: %.0f MB at start, %.0f MB after 12 concurrent 40 MP frames, a batch of 8, "
             "a 16-bit PNG and a float TIFF", before, peak)
    assert statuses == [200] * 15
    assert peak - before < PEAK_GROWTH_MB, peak - before


def deep_frames(width: int, height: int) -> list[tuple[bytes, str]]:
    grey16, grey_float = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.full((height, width), 40000, np.uint16)).save(grey16, "PNG")
    flat = Image.fromarray(np.full((height, width), 0.5, np.float32))
    flat.save(grey_float, "TIFF", compression="tiff_adobe_deflate")
    return [(grey16.getvalue(), "image/png"), (grey_float.getvalue(), "image/tiff")]


def test_a_batch_runs_in_bounded_pieces(tiny_bundle, monkeypatch):
    app = create_app({"model": tiny_bundle, "max_run_batch": 3})
    runtime = app.extensions["ecosort"].runtime
    sizes = []
    original = runtime.infer
    monkeypatch.setattr(runtime, "infer", lambda batch: sizes.append(len(batch)) or original(batch))
    files = {f"f{i}": (io.BytesIO(solid((0, 255, 0))), f"{i}.png", "image/png") for i in range(8)}
    r = app.test_client().post("/v1/classify/batch", data=files, content_type="multipart/form-data")
    assert r.status_code == 200 and [x["label"] for x in r.json["results"]] == ["glass"] * 8
    assert sizes == [3, 3, 2]


def test_metric_labels_are_a_closed_set(client):
    for i in range(30):
        client.open("/healthz", method=f"JUNK{i}")
    client.open("/v1/classify", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    methods = set(re.findall(r'ecosort_requests_total\{method="([^"]+)"', text))
    statuses = set(re.findall(r'ecosort_requests_total\{[^}]*status="([^"]+)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}, methods
    assert "other" in methods and all(re.fullmatch(r"\d{3}|\dxx", s) for s in statuses), statuses


def test_partial_feedback_writes_are_cleaned_and_counted(tmp_path):
    (tmp_path / "glass").mkdir()
    stale = tmp_path / "glass" / ".abc.123.tmp"
    stale.write_bytes(b"\0" * 5000)  # a writer killed with -9 mid-write
    jpeg = np.zeros(10).tobytes()
    with pytest.raises(Exception, match="size cap"):
        store(tmp_path, "glass", jpeg + b"x" * 5000, cap_bytes=5000)
    assert not stale.exists()
    path, created = store(tmp_path, "glass", jpeg, cap_bytes=5000)
    assert created and path.exists()


def test_model_route_shows_no_machine_paths(client):
    text = client.get("/v1/model").get_data(as_text=True)
    assert "../" not in text and "/work/" not in text and "-dirty" not in text


def test_readyz_says_draining_once_shutdown_starts(tiny_bundle):
    from server.app import start_draining

    app = create_app({"model": tiny_bundle})
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    start_draining(app)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["error"]["code"] == "draining" and r.headers["Retry-After"] == "1"
    assert client.post("/v1/classify", data=solid((255, 0, 0)), content_type="image/png").status_code == 200
