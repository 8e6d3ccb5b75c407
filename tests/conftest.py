from pathlib import Path

import pytest

from server import create_app
from tests.helpers import make_bundle

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "ecosort.json"
SAMPLES = sorted((ROOT / "tests" / "data" / "trashnet").glob("*.jpg"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def app(tiny_bundle):
    return create_app({"model": tiny_bundle, "ort_threads": 1})


@pytest.fixture
def client(app):
    return app.test_client()
