"""Token, no debug, no model-changing route, no torch in the kiosk image."""

import re

import pytest

from server import create_app
from tests.conftest import ROOT
from tests.helpers import solid


@pytest.fixture
def locked(tiny_bundle):
    return create_app({"model": tiny_bundle, "api_token": "s3cret-token"}).test_client()


def test_token_required_everywhere_but_healthz(locked):
    assert locked.get("/healthz").status_code == 200
    for method, path in [("get", "/"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/v1/model"),
                         ("post", "/v1/classify"), ("post", "/v1/classify/batch"), ("post", "/predict"),
                         ("get", "/nope")]:
        r = getattr(locked, method)(path)
        assert r.status_code == 401, path
        assert r.get_json()["error"]["code"] == "unauthorized" and "WWW-Authenticate" in r.headers


@pytest.mark.parametrize("headers,query", [
    ({"Authorization": "Bearer s3cret-token"}, ""),
    ({"X-API-Token": "s3cret-token"}, ""),
])
def test_token_accepted(locked, headers, query):
    r = locked.post("/v1/classify" + query, data=solid((0, 0, 0)), headers=headers)
    assert r.status_code == 200 and r.get_json()["label"] == "plastic"


def test_query_token_is_for_the_page_only(locked):
    assert locked.get("/?token=s3cret-token").status_code == 200
    assert locked.post("/v1/classify?token=s3cret-token", data=solid((0, 0, 0))).status_code == 401


@pytest.mark.parametrize("token", ["s3cret-toke", "s3cret-token2", "", "S3CRET-TOKEN", "s3cret-token\x00"])
def test_wrong_tokens_refused(locked, token):
    assert locked.get("/readyz", headers={"X-API-Token": token}).status_code == 401


def test_no_debug_and_no_route_that_changes_the_model(app):
    assert app.debug is False and app.testing is False
    routes = {(r.rule, m) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
    assert routes == {("/v1/classify", "POST"), ("/v1/classify/batch", "POST"), ("/predict", "POST"),
                      ("/v1/model", "GET"), ("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET"),
                      ("/", "GET"), ("/v2", "GET"), ("/v2/health/live", "GET"), ("/v2/health/ready", "GET"),
                      ("/v2/models/<name>", "GET"), ("/v2/models/<name>/ready", "GET"), ("/openapi.json", "GET")}


def test_serve_requirements_are_pinned_and_torch_free():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-serve.txt").read_text().splitlines()]
    packages = [line for line in lines if line]
    assert packages and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", p) for p in packages), packages
    names = {p.split("==")[0].lower() for p in packages}
    assert not names & {"torch", "torchvision", "timm", "onnx", "scikit-learn"}


def test_train_requirements_are_pinned():
    for line in (ROOT / "requirements-train.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            assert "==" in line, line


def test_server_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, server, server.app, server.__main__, server.feedback; from server import create_app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'training')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gunicorn_master_does_not_load_onnxruntime():
    """The master imports server.config only; onnxruntime loaded before fork made every
    worker abort (std::system_error) at exit."""
    import subprocess
    import sys

    code = "import sys, server, server.config; print('onnxruntime' in sys.modules, 'flask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
