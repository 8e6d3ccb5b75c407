"""The OpenAPI document is the API: every route is in it, and real answers of every
kind (success and each error) validate against it."""

import io
import json

import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate

from server import create_app
from tests.helpers import encode, solid

SPEC = json.loads(open("server/openapi.json").read())


@pytest.fixture(scope="module")
def openapi():
    validate(SPEC)  # a valid OpenAPI 3.1 document
    return OpenAPI.from_dict(SPEC)


@pytest.fixture
def full_client(tiny_bundle, tmp_path):
    return create_app({"model": tiny_bundle, "ort_threads": 1, "feedback_dir": str(tmp_path / "fb")}).test_client()


def test_every_route_is_documented(full_client):
    app = full_client.application
    routes = {r.rule.replace("<", "{").replace(">", "}") for r in app.url_map.iter_rules()}
    assert routes == set(SPEC["paths"])
    for rule in app.url_map.iter_rules():
        methods = {m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}}
        assert methods == set(SPEC["paths"][rule.rule.replace("<", "{").replace(">", "}")]), rule.rule


def exchanges(client):
    png = solid((200, 40, 40))
    yield client.post("/v1/classify", data=png, content_type="image/png")
    yield client.post("/v1/classify?top_k=2", data={"image": (io.BytesIO(png), "a.png")})
    yield client.post("/v1/classify", data=b"", content_type="image/png")
    yield client.post("/v1/classify", data=b"not an image", content_type="image/jpeg")
    yield client.post("/v1/classify?top_k=99", data=png, content_type="image/png")
    yield client.post("/v1/classify", data=encode(solid_image(40, 4000), "PNG"), content_type="image/png")
    yield client.post("/v1/classify/batch", data={"a": (io.BytesIO(png), "a.png"), "b": (io.BytesIO(b"x"), "b.png")})
    yield client.post("/v1/classify/batch", data=png, content_type="image/png")
    yield client.post("/predict", data={"file": (io.BytesIO(png), "p.png")})
    yield client.post("/v1/feedback?label=glass", data=png, content_type="image/png")
    yield client.post("/v1/feedback?label=glass", data=png, content_type="image/png")
    yield client.post("/v1/feedback?label=nope", data=png, content_type="image/png")
    for path in ("/v1/model", "/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready",
                 "/v2/models/tiny", "/v2/models/tiny/ready", "/v2/models/other", "/metrics", "/openapi.json", "/"):
        yield client.get(path)


def as_openapi(response):
    """The exchange as openapi-core sees it (the request body is consumed by then)."""
    r = response.request
    request = MockRequest("http://localhost", r.method.lower(), r.path, args=dict(r.args),
                          content_type=r.mimetype or "application/octet-stream")
    return request, MockResponse(response.get_data(), response.status_code, headers=dict(response.headers),
                                 content_type=response.mimetype)


def solid_image(width, height):
    from PIL import Image

    return Image.new("RGB", (width, height), (10, 200, 10))


def test_real_answers_validate(openapi, full_client):
    seen = set()
    for response in exchanges(full_client):
        openapi.validate_response(*as_openapi(response))
        seen.add(response.status_code)
    assert seen >= {200, 201, 400, 404, 415, 422}


def test_an_answer_off_the_document_fails(openapi, full_client):
    response = full_client.get("/healthz")
    response.set_data(json.dumps({"status": "maybe"}))
    with pytest.raises(Exception, match="(?i)valid"):
        openapi.validate_response(*as_openapi(response))


def test_served_document_is_the_file(client):
    assert client.get("/openapi.json").get_json() == SPEC


def test_schemathesis_finds_no_server_error(tiny_bundle, tmp_path):
    """Property-based requests generated from the document against the real server
    (short run here; `SCHEMATHESIS_EXAMPLES=200` for the long one)."""
    import os
    import subprocess
    import sys

    from bench.serve import Gunicorn

    examples = os.environ.get("SCHEMATHESIS_EXAMPLES", "15")
    with Gunicorn(tiny_bundle, WEB_CONCURRENCY="1", FEEDBACK_DIR=str(tmp_path / "fb")) as g:
        run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", g.url + "/openapi.json",
                              "--checks", "not_a_server_error", "--max-examples", examples, "--no-color",
                              "--request-timeout", "10"], capture_output=True, text=True, timeout=600)
        log = g.output()
    assert run.returncode == 0, run.stdout[-4000:]
    assert "Traceback" not in log, log[-4000:]
