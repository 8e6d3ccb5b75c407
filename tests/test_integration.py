"""What integrators plug into: CORS, the KServe v2 health/metadata routes, feedback records."""

import io
import json

from server import create_app
from server.feedback import RECORDS, SIZE
from tests.helpers import solid

ORIGIN = "https://kiosk.example"


def test_cors_is_off_by_default(client):
    r = client.get("/readyz", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_allows_listed_origins_only(tiny_bundle):
    client = create_app({"model": tiny_bundle, "cors_origins": f"{ORIGIN}, https://b.example",
                         "api_token": "t0k"}).test_client()
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = client.options("/v1/classify", headers=preflight)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    other = client.options("/v1/classify", headers={**preflight, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    r = client.post("/v1/classify", data=solid((255, 0, 0)), content_type="image/png",
                    headers={"Origin": ORIGIN, "Authorization": "Bearer t0k"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert client.post("/v1/classify", data=solid((255, 0, 0)), headers={"Origin": ORIGIN}).status_code == 401


def test_kserve_v2_health_and_metadata(client):
    assert client.get("/v2/health/live").json == {"live": True}
    assert client.get("/v2/health/ready").json == {"ready": True}
    meta = client.get("/v2/models/tiny").json
    assert meta["inputs"][0]["name"] == "image" and meta["inputs"][0]["shape"][0] == -1
    assert meta["outputs"][0]["shape"] == [-1, 6] and len(meta["versions"][0]) == 64
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2").json["name"] == "ecosort"


def test_kserve_ready_is_503_while_draining(tiny_bundle):
    from server.app import start_draining

    app = create_app({"model": tiny_bundle})
    start_draining(app)
    assert app.test_client().get("/v2/health/ready").status_code == 503


def test_feedback_writes_a_record_per_stored_picture(tiny_bundle, tmp_path):
    client = create_app({"model": tiny_bundle, "feedback_dir": str(tmp_path), "station_id": "st-7"}).test_client()
    for colour, label in (((255, 0, 0), "glass"), ((0, 255, 0), "glass"), ((255, 0, 0), "glass")):
        r = client.post("/v1/feedback", data={"image": (io.BytesIO(solid(colour)), "x.png"), "label": label},
                        content_type="multipart/form-data")
        assert r.status_code in (200, 201)
    records = [json.loads(line) for line in (tmp_path / RECORDS).read_text().splitlines()]
    assert len(records) == 2  # the repeat is not stored again
    first = records[0]
    assert first["label"] == "glass" and first["predicted"] == "cardboard" and 0 < first["confidence"] <= 1
    assert first["station_id"] == "st-7" and len(first["model_sha256"]) == 64 and first["time"].endswith("+00:00")
    assert (tmp_path / first["path"]).is_file()
    assert int((tmp_path / SIZE).read_text()) == sum(p.stat().st_size for p in tmp_path.glob("*/*.jpg"))
