"""POST /v1/feedback: training layout, atomic, deduplicated, capped, safe under concurrency."""

import gc
import io
import multiprocessing
import os
import time

import numpy as np
import pytest
from PIL import Image

from server import create_app
from server.feedback import store
from tests.conftest import fit
from tests.helpers import encode


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3)).astype(np.uint8))
    return encode(coarse.resize((80, 60), Image.Resampling.BILINEAR), "PNG")


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "feedback"


@pytest.fixture
def client(tiny_bundle, folder):
    return create_app({"model": tiny_bundle, "feedback_dir": str(folder), "feedback_max_mb": 1}).test_client()


def send(client, data, label):
    return client.post("/v1/feedback", data={"image": (io.BytesIO(data), "x.png"), "label": label})


def test_off_unless_configured(app):
    assert app.test_client().post("/v1/feedback").status_code == 404


def test_stores_in_training_layout_once(client, folder):
    r = send(client, photo(1), "glass")
    assert r.status_code == 201 and r.get_json()["stored"] is True
    path = folder / "glass" / f"{r.get_json()['sha256']}.jpg"
    assert Image.open(path).format == "JPEG"
    again = send(client, photo(1), "glass")
    assert again.status_code == 200 and again.get_json()["stored"] is False
    conflict = send(client, photo(1), "metal")
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "conflicting_label"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")) == [path.relative_to(folder)
                                                                                       .as_posix()]


def test_bad_feedback_is_refused(client, folder):
    assert send(client, photo(2), "banana").status_code == 400
    assert send(client, b"nope", "glass").status_code == 415
    assert client.post("/v1/feedback", data={"label": "glass"}).status_code == 400
    assert not list(folder.rglob("*.jpg"))


def test_size_cap(client, folder):
    rng = np.random.default_rng(0)
    noisy = [encode(Image.fromarray(rng.integers(0, 255, (300, 400, 3)).astype(np.uint8)), "PNG") for _ in range(20)]
    codes = [send(client, data, "paper").status_code for data in noisy]  # ~150 KB each as JPEG
    assert codes[0] == 201 and 507 in codes
    total = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
    assert total <= 1024 * 1024


def _writer(root, seeds, label):
    for seed in seeds:
        jpeg = encode(Image.open(io.BytesIO(photo(seed))).convert("RGB"), "JPEG", quality=95)
        store(root, label, jpeg, 10**9)


def forked(target, *args):
    """A forked process. pytest's own holds onnxruntime sessions of earlier tests: one left as
    garbage and collected in the child waits forever on pool threads that fork did not copy
    (with the folder's lock held), so the garbage goes before the fork."""
    gc.collect()
    return multiprocessing.get_context("fork").Process(target=target, args=args)


def test_concurrent_writers_lose_and_corrupt_nothing(folder):
    folder.mkdir()
    seeds = list(range(40))
    procs = [forked(_writer, folder, seeds, "glass") for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    files = sorted(folder.glob("glass/*.jpg"))
    assert len(files) == len(seeds)  # every image once, however many writers raced
    for f in files:
        Image.open(f).load()  # complete, decodable
    assert not list(folder.rglob("*.tmp"))


def _crash_mid_write(root):
    import server.feedback as fb

    def die(*args):
        os._exit(9)  # the process dies after the temp file is written, before the rename

    fb.os.replace = die
    store(root, "metal", encode(Image.new("RGB", (40, 40), (9, 9, 9)), "JPEG"), 10**9)


def test_crash_mid_write_leaves_no_partial_image(folder, tiny_bundle):
    folder.mkdir()
    p = forked(_crash_mid_write, folder)
    p.start()
    p.join()
    assert p.exitcode == 9
    assert not list(folder.rglob("*.jpg"))  # training never sees a half-written file
    leftovers = list(folder.rglob("*.tmp"))
    assert len(leftovers) == 1
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    create_app({"model": tiny_bundle, "feedback_dir": str(folder)})  # start-up sweeps stale temp files
    assert not list(folder.rglob("*.tmp"))


def test_training_fits_on_the_feedback_folder(client, folder, tmp_path):
    for label in ("glass", "metal", "paper"):
        for i in range(8):
            assert send(client, photo(1000 + 10 * ["glass", "metal", "paper"].index(label) + i), label).status_code \
                == 201
    metrics = fit(folder, tmp_path / "run", "--max-steps", "1")
    assert metrics["test"]["n"] >= 3
