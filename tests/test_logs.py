"""Logs a machine can read: one JSON object a line, each request's id on its lines."""

import json
import logging

import requests

from bench.serve import Gunicorn
from server import logs
from tests.helpers import solid


def formatted(record: logging.LogRecord) -> dict:
    return json.loads(logs.formatter().format(record))


def test_request_line_carries_the_answer(client, caplog):
    with caplog.at_level(logging.INFO, "server.request"):
        r = client.post("/v1/classify", data=solid((255, 255, 255)), content_type="image/png",
                        headers={"X-Request-ID": "kiosk-7"})
    line = formatted(next(rec for rec in caplog.records if rec.name == "server.request"))
    body = r.get_json()
    assert line["request_id"] == "kiosk-7" and line["route"] == "/v1/classify" and line["status"] == 200
    assert line["label"] == body["label"] and line["model_sha256"] == body["model"]["sha256"]
    assert abs(line["confidence"] - body["confidence"]) < 1e-3 and line["latency_ms"] > 0
    assert set(line) >= {"time", "level", "logger", "message"}


def test_500_line_carries_the_id_the_client_got(app, caplog, monkeypatch):
    def broken(*_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.extensions["ecosort"], "classify", broken)
    with caplog.at_level(logging.INFO):
        r = app.test_client().post("/v1/classify", data=solid((0, 0, 0)), content_type="image/png")
    assert r.status_code == 500 and "a bug" not in r.get_data(as_text=True)
    error = formatted(next(rec for rec in caplog.records if rec.levelno == logging.ERROR))
    assert error["request_id"] == r.get_json()["request_id"] and error["route"] == "/v1/classify"
    assert "RuntimeError: a bug" in error["exc_info"]


def test_gunicorn_writes_json_lines_with_request_ids(tiny_bundle):
    with Gunicorn(tiny_bundle, WEB_CONCURRENCY="1", ACCESS_LOG="-") as g:
        requests.post(g.url + "/v1/classify", data=solid((255, 255, 255)),
                      headers={"Content-Type": "image/png", "X-Request-ID": "abc-123"})
        requests.post(g.url + "/v1/classify", data=b"junk", headers={"Content-Type": "image/png"})
        out = g.output()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) >= len(out.splitlines()) - 1  # all but gunicorn's first banner line
    mine = [line for line in lines if line.get("request_id") == "abc-123"]
    assert {line.get("logger", "access") for line in mine} == {"server.request", "access"}
    assert all(line["status"] == 200 for line in mine)
    assert any(line.get("status") == 415 and line.get("route") == "/v1/classify" for line in lines)
