"""Property-based fuzzing of preprocessing and the HTTP routes (hypothesis).

Every input gets a 200 or a documented 4xx with a JSON error: no 5xx, no other exception.
CI runs FUZZ_EXAMPLES=2500 per test (4 tests: 10,000 inputs); the long form is
`FUZZ_EXAMPLES=50000 FUZZ_RANDOM=1 python -m pytest tests/test_fuzz.py` (README).
"""

import io
import os
import struct
import zlib

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from server import create_app
from server.bundle import Preprocess
from server.preprocess import ImageError, decode, preprocess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck))
DOCUMENTED = {200, 400, 413, 415, 422}
SPEC = Preprocess(36, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares any size (a decompression bomb when large)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 56, 3)).astype(np.uint8))
    rgba = rgb.convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = [
        _save(rgb, "JPEG"), _save(rgb, "JPEG", progressive=True), _save(rgb, "JPEG", exif=exif),
        _save(rgb.convert("L"), "JPEG"), _save(rgb.convert("CMYK"), "JPEG"),
        _save(rgb, "PNG"), _save(rgba, "PNG"), _save(rgb.convert("P"), "PNG", transparency=0),
        _save(rgb.convert("LA"), "PNG"), _save(Image.fromarray(np.full((20, 20), 40000, np.uint16)), "PNG"),
        _save(rgb.convert("1"), "PNG"), _save(rgb, "WEBP"), _save(rgba, "WEBP", lossless=True),
        _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        _save(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        _save(rgb, "TIFF"), _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        _save(Image.fromarray(np.full((20, 20), 40000, np.uint16)), "TIFF"), _save(rgb, "BMP"),
        _png_with_size(100_000, 100_000), _png_with_size(0, 10), _png_with_size(1, 1),
    ]
    return out


SEEDS = seeds()


@st.composite
def mutated(draw) -> bytes:
    """A seed image, then 0-4 mutations: truncation, byte flips, insertions, deletions."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "header"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[at:]
        elif op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:  # scribble over the first bytes, where sizes and modes live
            head = draw(st.binary(min_size=1, max_size=32))
            data[8:8 + len(head)] = head
    return bytes(data)


inputs = st.one_of(mutated(), st.binary(max_size=512), st.sampled_from(SEEDS))


@pytest.fixture(scope="module")
def client(tiny_bundle):
    return create_app({"model": tiny_bundle, "ort_threads": 1, "max_pixels": 4_000_000,
                       "max_upload_mb": 0.5, "min_side": 2}).test_client()


def check(response) -> None:
    assert response.status_code in DOCUMENTED, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert body is not None
    if response.status_code != 200:
        assert set(body["error"]) == {"code", "message"}


@FUZZ
@given(inputs)
def test_preprocessing_never_raises_anything_else(data):
    try:
        image = decode(data, 4_000_000, 2, draft_to=SPEC.resize if len(data) % 2 else None)
    except ImageError as exc:
        assert exc.status in DOCUMENTED
        return
    assert image.mode == "RGB"
    array = preprocess(image, SPEC)
    assert array.shape == (3, 32, 32) and np.isfinite(array).all()


@FUZZ
@given(inputs, st.sampled_from(["image/jpeg", "image/png", "application/octet-stream", "text/plain",
                                "application/json", "", "image/webp; charset=binary"]))
def test_classify_raw_body(client, data, content_type):
    check(client.post("/v1/classify", data=data, content_type=content_type))


@FUZZ
@given(inputs, st.sampled_from(["image", "file", "other"]), st.sampled_from(["/v1/classify", "/predict"]))
def test_classify_multipart(client, data, field, route):
    check(client.post(route, data={field: (io.BytesIO(data), "x.bin")}, content_type="multipart/form-data"))


@FUZZ
@given(st.lists(inputs, min_size=0, max_size=4), st.binary(max_size=200), st.booleans())
def test_batch_and_malformed_multipart(client, images, junk, raw_junk):
    if raw_junk:  # a multipart body that is not one
        check(client.post("/v1/classify/batch", data=junk, content_type="multipart/form-data; boundary=zz"))
        check(client.post("/v1/classify", data=b"--zz\r\n" + junk, content_type="multipart/form-data; boundary=zz"))
        return
    files = {f"f{i}": (io.BytesIO(d), f"{i}.bin") for i, d in enumerate(images)}
    response = client.post("/v1/classify/batch", data=files, content_type="multipart/form-data")
    check(response)
    if response.status_code == 200:
        assert len(response.get_json()["results"]) == len(images)


def test_memory_stays_bounded(client):
    """After the fuzzing above, the same inputs again must not grow the process much."""
    process = psutil.Process()
    for data in SEEDS * 20:
        client.post("/v1/classify", data=data)
    before = process.memory_info().rss
    for data in SEEDS * 50:
        client.post("/v1/classify", data=data)
    assert process.memory_info().rss - before < 50 * 2**20


def test_real_gunicorn_workers_survive_fuzzed_uploads(tiny_bundle):
    """The same kind of inputs through a real gunicorn: no 5xx, and no worker dies."""
    import requests

    from bench.serve import Gunicorn

    rng = np.random.default_rng(1)
    with Gunicorn(tiny_bundle, MIN_SIDE="2") as server:
        workers = server.wait_workers(2)
        for i in range(600):
            data = bytearray(SEEDS[i % len(SEEDS)])
            for _ in range(int(rng.integers(1, 4))):  # flip bytes, sometimes truncate
                at = int(rng.integers(0, len(data)))
                data[at] ^= int(rng.integers(1, 256))
            if i % 5 == 0:
                del data[int(rng.integers(0, len(data))):]
            r = requests.post(server.url + "/v1/classify", data=bytes(data), timeout=30,
                              headers={"Content-Type": "image/png"})
            assert r.status_code in DOCUMENTED and r.json(), (r.status_code, r.text[:200])
        assert server.workers() == workers, "a worker died"
