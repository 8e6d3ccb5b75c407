import gc
from pathlib import Path

import pytest

from server import create_app
from tests.helpers import make_bundle

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "ecosort.json"
SAMPLES = sorted((ROOT / "tests" / "data" / "trashnet").glob("*.jpg"))


@pytest.fixture(autouse=True)
def _collect_garbage():
    """Each test's garbage collected in this process. An onnxruntime session left in a
    cycle and collected in a forked child (a DataLoader worker) waits forever on pool
    threads that fork did not copy, and the test hangs."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def app(tiny_bundle):
    return create_app({"model": tiny_bundle, "ort_threads": 1})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    from tests.helpers import make_dataset

    return make_dataset(tmp_path_factory.mktemp("images"), per_class=10)


def fit(dataset: Path, out: Path, *extra: str) -> dict:
    from training.train import get_args_parser, main

    args = get_args_parser().parse_args([
        "--data", str(dataset), "--out", str(out), "--epochs", "1", "--image-size", "64",
        "--batch-size", "8", "--workers", "0", "--no-progress", *extra])
    return main(args)


@pytest.fixture(scope="session")
def fitted(dataset, tmp_path_factory):
    """A one-epoch EfficientNet-Lite0 fit on the generated set (seconds on CPU)."""
    out = tmp_path_factory.mktemp("run")
    return out, fit(dataset, out)


@pytest.fixture(scope="session")
def second_member(fitted, dataset, tmp_path_factory) -> Path:
    """Another network on the same split, as a second ensemble member."""
    run, _ = fitted
    out = tmp_path_factory.mktemp("run2")
    fit(dataset, out, "--manifest", str(run / "split.json"), "--seed", "3", "--max-steps", "2")
    return out / "best.pt"
