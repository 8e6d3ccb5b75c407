"""Every route and every error row of the API, on the tiny model."""

import io
import json
import re

import pytest
from PIL import Image

from server import create_app
from tests.helpers import CLASSES, EXPECTED, encode, solid


def error_of(response, status, code=None):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) >= {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "/work" not in text and ".py" not in text
    return body


@pytest.mark.parametrize("rgb,label", EXPECTED.items())
def test_classify_raw_body(client, rgb, label):
    r = client.post("/v1/classify", data=solid(rgb), content_type="image/png")
    assert r.status_code == 200
    body = r.get_json()
    assert body["label"] == label
    assert [c["label"] for c in body["top_k"]][0] == label
    assert sorted(c["label"] for c in body["top_k"]) == sorted(CLASSES)
    probs = [c["probability"] for c in body["top_k"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    assert body["confidence"] == probs[0]
    assert body["uncertain"] == (body["confidence"] < 0.5)
    assert set(body["timing_ms"]) == {"decode", "preprocess", "inference", "total"}
    assert body["model"]["name"] == "tiny" and len(body["model"]["sha256"]) == 64
    assert r.headers["X-Request-ID"] == body["request_id"]


def test_classify_multipart_fields_and_top_k(client):
    for field in ("image", "file"):
        r = client.post("/v1/classify?top_k=2", data={field: (io.BytesIO(solid((0, 255, 0))), "g.png")})
        assert r.status_code == 200
        assert r.get_json()["label"] == "glass" and len(r.get_json()["top_k"]) == 2


def test_request_id_echoed_or_made(client):
    r = client.post("/v1/classify", data=solid((0, 0, 255)), headers={"X-Request-ID": "kiosk-7.42"})
    assert r.get_json()["request_id"] == "kiosk-7.42"
    r = client.post("/v1/classify", data=solid((0, 0, 255)), headers={"X-Request-ID": "bad id <script>"})
    assert len(r.get_json()["request_id"]) == 32


def test_temperature_softens_confidence(client, tiny_bundle):
    """The bundle's temperature (1.5) is applied: confidence < uncalibrated softmax."""
    import numpy as np

    from tests.helpers import W

    raw = np.array([1.0, -1.0, -1.0]) @ W
    plain = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
    body = client.post("/v1/classify", data=solid((255, 0, 0))).get_json()
    scaled = np.exp((raw - raw.max()) / 1.5)
    assert body["confidence"] == pytest.approx((scaled / scaled.sum()).max(), abs=1e-4)
    assert body["confidence"] < plain.max()


def test_batch_one_bad_image_fails_alone(client):
    files = [
        ("images", (io.BytesIO(solid((255, 0, 0))), "red.png")),
        ("images", (io.BytesIO(b"not an image"), "junk.txt")),
        ("images", (io.BytesIO(solid((255, 255, 255), fmt="JPEG")), "white.jpg")),
    ]
    r = client.post("/v1/classify/batch", data=files_dict(files), content_type="multipart/form-data")
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [x["filename"] for x in results] == ["red.png", "junk.txt", "white.jpg"]
    assert results[0]["label"] == "cardboard" and results[2]["label"] == "paper"
    assert results[1]["error"]["code"] == "unsupported_image"


def files_dict(files):
    from werkzeug.datastructures import MultiDict

    return MultiDict(files)


def test_batch_errors(client):
    error_of(client.post("/v1/classify/batch", data=solid((0, 0, 0)), content_type="image/png"), 415)
    error_of(client.post("/v1/classify/batch", data={}, content_type="multipart/form-data"), 400, "no_image")
    many = files_dict([("images", (io.BytesIO(solid((0, 0, 0))), f"{i}.png")) for i in range(17)])
    error_of(client.post("/v1/classify/batch", data=many, content_type="multipart/form-data"), 422, "too_many_images")


def test_legacy_predict_shape(client):
    r = client.post("/predict", data={"file": (io.BytesIO(solid((255, 255, 0))), "bottle.png")})
    assert r.status_code == 200
    body = r.get_json()
    assert set(body) == {"filename", "class", "confidence", "confidence_score"}
    assert body["filename"] == "bottle.png" and body["class"] == "trash"
    assert body["confidence"].endswith("%")
    assert float(body["confidence"][:-1]) == pytest.approx(100 * body["confidence_score"], abs=0.01)


def test_model_health_ready_metrics(client):
    model = client.get("/v1/model").get_json()
    assert model["classes"] == CLASSES and model["input"]["shape"] == [None, 3, 32, 32]
    assert model["ready"] is True and "folder" not in model
    assert client.get("/healthz").get_json() == {"status": "alive"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/classify", data=solid((255, 0, 0)))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'ecosort_predictions_total{label="cardboard"}' in text
    assert 'ecosort_stage_duration_seconds_bucket{le="0.002",stage="inference"}' in text
    assert 'ecosort_requests_total{method="POST",route="/v1/classify",status="200"}' in text


def test_readyz_503_before_warm_up(app):
    app.extensions["ecosort"].runtime.ready.clear()
    client = app.test_client()
    error_of(client.get("/readyz"), 503, "not_ready")
    error_of(client.post("/v1/classify", data=solid((255, 0, 0))), 503, "not_ready")
    assert client.get("/healthz").status_code == 200


def test_index_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "v1/classify" in html and "getUserMedia" in html
    # No CDN: the kiosk is offline. The one absolute URL is SVG's namespace name, which
    # is never fetched.
    urls = set(re.findall(r"https?://[^\s\"'%)]+", html.replace("%3A", ":").replace("%2F", "/")))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls


# ---- error rows -------------------------------------------------------------------------

def test_no_or_empty_image_400(client):
    error_of(client.post("/v1/classify"), 400, "no_image")
    error_of(client.post("/v1/classify", data=b"", content_type="image/jpeg"), 400, "no_image")
    error_of(client.post("/v1/classify", data={"image": (io.BytesIO(b""), "e.jpg")}), 400, "empty_image")
    error_of(client.post("/v1/classify", data={"other": (io.BytesIO(solid((1, 2, 3))), "x.png")}), 400, "no_image")


def test_malformed_multipart_400(client):
    body = b"--XYZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\nabc"  # no end
    error_of(client.post("/v1/classify", data=body, content_type="multipart/form-data; boundary=XYZ"), 400)
    error_of(client.post("/v1/classify", data=b"garbage", content_type="multipart/form-data"), 400)


def test_too_large_413(tiny_bundle):
    client = create_app({"model": tiny_bundle, "max_upload_mb": 0.01}).test_client()
    big = b"\xff\xd8" + b"\0" * 20_000
    error_of(client.post("/v1/classify", data=big, content_type="image/jpeg"), 413, "payload_too_large")
    error_of(client.post("/v1/classify", data={"image": (io.BytesIO(big), "a.jpg")}), 413)


@pytest.mark.parametrize("data,ctype", [
    (b"hello world", "text/plain"),
    (json.dumps({"image": "x"}).encode(), "application/json"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "image/eps"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 10, "image/png"),
])
def test_not_an_image_415(client, data, ctype):
    error_of(client.post("/v1/classify", data=data, content_type=ctype), 415)


def test_corrupt_jpeg_415(client):
    data = solid((200, 10, 10), size=(300, 200), fmt="JPEG")
    error_of(client.post("/v1/classify", data=data[: len(data) // 2]), 415, "corrupt_image")


def test_pixels_422(tiny_bundle):
    client = create_app({"model": tiny_bundle, "max_pixels": 10_000}).test_client()
    error_of(client.post("/v1/classify", data=solid((0, 0, 0), size=(200, 100))), 422, "too_many_pixels")
    error_of(client.post("/v1/classify", data=solid((0, 0, 0), size=(4, 200))), 422, "image_too_small")


def test_decompression_bomb_422(client):
    """A 1-bit PNG that declares 60000x60000 pixels is refused from its header alone."""
    bomb = encode(Image.new("1", (60000, 60000)), "PNG")
    assert len(bomb) < 1_000_000
    error_of(client.post("/v1/classify", data=bomb, content_type="image/png"), 422, "too_many_pixels")


def test_404_405_json(client):
    error_of(client.get("/nope"), 404, "not_found")
    r = client.get("/v1/classify")
    error_of(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


def test_bad_top_k_400(client):
    for value in ("0", "7", "x", "-1"):
        error_of(client.post(f"/v1/classify?top_k={value}", data=solid((0, 0, 0))), 400, "bad_top_k")


def test_overloaded_503(app):
    gate = app.extensions["ecosort.gate"]
    app.config["ECOSORT"] = app.config["ECOSORT"].__class__(**{**app.config["ECOSORT"].__dict__,
                                                               "queue_timeout_s": 0.01})
    held = [gate.acquire(1) for _ in range(app.config["ECOSORT"].max_inflight)]
    try:
        r = app.test_client().post("/v1/classify", data=solid((0, 0, 0)))
        error_of(r, 503, "overloaded")
        assert r.headers["Retry-After"] == "1"
    finally:
        for _ in held:
            gate.release()


def test_a_full_queue_refuses_at_once():
    import threading
    import time

    from server.api import Gate

    gate = Gate(1, 2)
    assert gate.acquire(1)
    waiters = [threading.Thread(target=gate.acquire, args=(0.5,)) for _ in range(2)]
    for w in waiters:
        w.start()
    time.sleep(0.05)
    start = time.perf_counter()
    assert not gate.acquire(10)  # two already waiting: refused without waiting
    assert time.perf_counter() - start < 0.05
    for w in waiters:
        w.join()
    gate.release()
    assert gate.acquire(0.1)


@pytest.mark.parametrize("parallel_runs", [1, 2])
def test_session_runs_per_worker_are_bounded(tiny_bundle, parallel_runs):
    """ORT_PARALLEL_RUNS: concurrent requests share one session, at most N runs at once (arena size)."""
    import threading
    import time

    import numpy as np

    app = create_app({"model": tiny_bundle, "ort_threads": 1, "ort_parallel_runs": parallel_runs})
    runtime = app.extensions["ecosort"].runtime
    session, lock, state = runtime.session, threading.Lock(), {"now": 0, "most": 0}

    class Counting:  # the real session, with a count of the runs inside it at once
        def run(self, *args):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.05)
            try:
                return session.run(*args)
            finally:
                with lock:
                    state["now"] -= 1

    runtime.session = Counting()
    batch = np.zeros((1, *runtime.bundle.input.shape[1:]), np.float32)
    threads = [threading.Thread(target=runtime.infer, args=(batch,)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert state["most"] == parallel_runs


def test_parallel_runs_must_be_positive(tiny_bundle):
    from server.config import Config

    assert Config.from_env({"ORT_PARALLEL_RUNS": "3"}).ort_parallel_runs == 3
    with pytest.raises(ValueError, match="ORT_PARALLEL_RUNS must be at least 1"):
        Config.from_env({"ORT_PARALLEL_RUNS": "0"})


def test_session_defaults_use_every_core_and_no_memory_pattern(tiny_bundle):
    from server.config import Config, cores
    from server.runtime import session_options

    config = Config.from_env({})
    assert config.threads == cores() and config.ort_mem_pattern is False
    assert Config.from_env({"ORT_THREADS": "1", "ORT_MEM_PATTERN": "1"}).threads == 1
    assert Config.from_env({"ORT_MEM_PATTERN": "on"}).ort_mem_pattern is True
    assert session_options(1, False, True).enable_mem_pattern is False
    assert session_options(1, False, True, True).enable_mem_pattern is True
    # With the arena on, sessions share the process's arena that grows by what is asked for.
    assert session_options(1, False, True).get_session_config_entry("session.use_env_allocators") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # its own arena, or none
        session_options(1, False, False).get_session_config_entry("session.use_env_allocators")
