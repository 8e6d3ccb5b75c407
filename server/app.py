"""The app factory: config, bundle, session, blueprint, error handlers, hooks."""

from __future__ import annotations

import hmac
import io
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask, g, request

from . import kiosk, logs, metrics
from .api import Gate, bp
from .bundle import for_this_cpu, load_bundle
from .classify import Classifier
from .config import Config
from .errors import ApiError, register_error_handlers
from .runtime import Runtime

log = logging.getLogger("server")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PAGE = Path(__file__).with_name("static") / "index.html"
OPENAPI = Path(__file__).with_name("openapi.json")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; loads, verifies and warms the model before returning (after fork)."""
    config = Config.from_env(**(test_config or {}))
    logs.add_request_fields()
    app = Flask(__name__, static_folder=None)  # the one page is served by the blueprint
    app.config.update(
        ECOSORT=config,
        MAX_CONTENT_LENGTH=int(config.max_upload_mb * 1024 * 1024),
        MAX_FORM_PARTS=4 * config.max_batch + 16,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    # Runtime verifies the bytes it loads. A graph this CPU cannot compute exactly gives way
    # to the one its bundle names.
    bundle = for_this_cpu(load_bundle(config.model, verify_sha256=False), verify_sha256=False)
    runtime = Runtime(bundle, config.threads, config.ort_spinning, config.ort_arena, config.ort_parallel_runs,
                      config.ort_mem_pattern)
    warm_ms = runtime.warm_up()
    log.info("model %s (%s) ready in %.0f ms warm-up, %d onnxruntime threads, fast_decode=%s",
             bundle.name, bundle.sha256[:12], warm_ms, config.threads, config.fast_decode)
    app.extensions["ecosort"] = Classifier(runtime, config)
    metrics.MODEL.labels(bundle.name, bundle.sha256).set(1)
    # Set now, not only after a request: a worker that has not answered yet would read 0.
    metrics.RSS.set(metrics.resident_bytes())
    app.extensions["ecosort.gate"] = Gate(config.max_inflight, config.max_queue)
    app.extensions["ecosort.page"] = kiosk.render(PAGE.read_bytes(), kiosk.load(config.kiosk_config, bundle.classes))
    app.extensions["ecosort.openapi"] = OPENAPI.read_bytes()
    app.register_blueprint(bp)
    register_error_handlers(app)
    _register_hooks(app, config)
    if config.cors_origins:
        from flask_cors import CORS

        # Off unless asked: a page served from elsewhere may call the API from these origins.
        CORS(app, origins=[o.strip() for o in config.cors_origins.split(",") if o.strip()],
             allow_headers=["Authorization", "Content-Type", "X-API-Token", "X-Request-ID"],
             expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    if config.feedback_dir:
        from .feedback import register_feedback

        register_feedback(app, Path(config.feedback_dir), config.feedback_max_mb)
    return app


def start_draining(app: Flask) -> None:
    """From now on /readyz says 'draining' (503), so a balancer stops sending new work here
    while in-flight requests finish. gunicorn's worker calls this on SIGTERM."""
    app.extensions["ecosort.draining"] = True
    log.info("draining: finishing in-flight requests, /readyz now 503")


def _register_hooks(app: Flask, config: Config) -> None:
    token = config.api_token.encode()

    @app.before_request
    def start() -> None:
        g.start = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        g.in_flight = True
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
        # A CORS preflight carries no credentials by design; it reveals nothing and runs nothing.
        open_route = request.path == "/healthz" or (request.method == "OPTIONS" and config.cors_origins)
        if token and not open_route and not hmac.compare_digest(_presented_token(), token):
            raise ApiError(401, "unauthorized", "missing or wrong API token",
                           {"WWW-Authenticate": 'Bearer realm="ecosort"'})
        if request.content_length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            _buffer_chunked_body(app.config["MAX_CONTENT_LENGTH"])

    @app.after_request
    def finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["X-Content-Type-Options"] = "nosniff"
        route = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in metrics.METHODS else "other"
        metrics.REQUESTS.labels(route, method, metrics.status_class(response.status_code)).inc()
        if "start" in g:
            metrics.LATENCY.labels(route).observe(time.perf_counter() - g.start)
        logs.request_line(response)
        metrics.RSS.set(metrics.resident_bytes())
        return response

    @app.teardown_request
    def done(_exc) -> None:
        if g.pop("in_flight", False):
            metrics.IN_FLIGHT.dec()


def _presented_token() -> bytes:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip().encode()
    if request.headers.get("X-API-Token"):
        return request.headers["X-API-Token"].encode()
    # The query token is for the kiosk page only (a browser cannot set a header on its
    # first load), and exactly once: `token=a&token=b` is no token.
    query = request.args.getlist("token")
    return query[0].encode() if request.path == "/" and len(query) == 1 else b""


def _buffer_chunked_body(limit: int) -> None:
    """Read a chunked body here, bounded, so bad framing is a 400 and an oversized body a
    413 before any route sees a byte; the route then reads it as if it had a length."""
    stream = request.environ["wsgi.input"]
    parts, size = [], 0
    try:
        while chunk := stream.read(min(1 << 16, limit + 1 - size)):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", "the upload is over the size limit")
    except ApiError:
        raise
    except Exception:  # noqa: BLE001 - the server's chunk parser raises its own types
        raise ApiError(400, "bad_framing", "the chunked request body is malformed") from None
    body = b"".join(parts)
    request.environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
    request.environ.pop("HTTP_TRANSFER_ENCODING", None)
    request.environ["wsgi.input_terminated"] = False
