"""The HTTP API: one blueprint, JSON in every answer."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import metrics
from .classify import Classifier, Prediction
from .errors import ApiError
from .preprocess import ImageError

bp = Blueprint("api", __name__)
SINGLE_FIELDS = ("image", "file")


def classifier() -> Classifier:
    return current_app.extensions["ecosort"]


class Gate:
    """`slots` requests at work, at most `queue` more waiting (each up to a timeout); one
    past that is refused at once. Under overload a client hears back within the queue
    timeout, with an answer or a 503, instead of waiting behind everyone."""

    def __init__(self, slots: int, queue: int):
        self._slots, self._lock = threading.BoundedSemaphore(slots), threading.Lock()
        self.queue, self.waiting = queue, 0

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self.waiting >= self.queue:
                return False
            self.waiting += 1
        try:
            return self._slots.acquire(timeout=timeout)
        finally:
            with self._lock:
                self.waiting -= 1

    def release(self) -> None:
        self._slots.release()


@contextmanager
def slot():
    """Bound the requests a worker works on at once; the rest wait, then are shed with 503."""
    gate: Gate = current_app.extensions["ecosort.gate"]
    if not gate.acquire(timeout=current_app.config["ECOSORT"].queue_timeout_s):
        metrics.SHED.inc()
        raise ApiError(503, "overloaded", "the server is busy; retry shortly", {"Retry-After": "1"})
    try:
        yield
    finally:
        gate.release()


def _require_ready() -> Classifier:
    clf = current_app.extensions.get("ecosort")
    if clf is None or not clf.runtime.ready.is_set():
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
    return clf


def single_upload(fields=SINGLE_FIELDS) -> tuple[str | None, bytes]:
    """The image from a multipart field or, for any other content type, the raw body."""
    if request.mimetype == "multipart/form-data":
        for name in fields:
            upload = request.files.get(name)
            if upload is not None:
                data = upload.read()
                if not data:
                    raise ApiError(400, "empty_image", f"multipart field {name!r} is empty")
                return upload.filename, data
        raise ApiError(400, "no_image", f"no image in multipart field {' or '.join(map(repr, fields))} "
                                        "(malformed multipart bodies also end here)")
    data = request.get_data(cache=False)
    if not data:
        raise ApiError(400, "no_image", "send the image as the request body or as multipart field 'image'")
    return None, data


def top_k() -> int:
    n_classes = len(classifier().bundle.classes)
    raw = request.args.get("top_k")
    if raw is None:
        return n_classes
    # ASCII digits only: str.isdigit() also accepts '²' and '①', which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= n_classes:
        raise ApiError(400, "bad_top_k", f"top_k must be an integer from 1 to {n_classes}")
    return int(raw)


def prediction_json(p: Prediction, k: int) -> dict:
    return {
        "label": p.label,
        "confidence": round(p.confidence, 6),
        "uncertain": p.uncertain,
        "top_k": [{"label": c, "probability": round(prob, 6)} for c, prob in p.ranked[:k]],
        "timing_ms": p.timing_ms,
    }


def model_json() -> dict:
    bundle = classifier().bundle
    return {"name": bundle.name, "sha256": bundle.sha256}


def error_json(exc: ImageError) -> dict:
    return {"error": {"code": exc.code, "message": exc.message}}


def answered(p: Prediction) -> None:
    """What the request's log line tells of the answer (server.logs.request_line)."""
    g.answer = {"label": p.label, "confidence": round(p.confidence, 4), "uncertain": p.uncertain,
                "model_sha256": classifier().bundle.sha256}


def classify_one(data: bytes) -> Prediction:
    with slot():
        result = _require_ready().classify([data])[0]
    if isinstance(result, ImageError):
        raise ApiError(result.status, result.code, result.message)
    return result


@bp.post("/v1/classify")
def classify():
    _require_ready()
    k = top_k()
    _, data = single_upload()
    result = classify_one(data)
    answered(result)
    return jsonify({**prediction_json(result, k), "model": model_json(), "request_id": g.request_id})


@bp.post("/v1/classify/batch")
def classify_batch():
    clf = _require_ready()
    k = top_k()
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "multipart_required", "send the images as multipart/form-data, one file each")
    uploads = [(f.filename, f.read()) for _, f in request.files.items(multi=True)]
    if not uploads:
        raise ApiError(400, "no_image", "no files in the multipart body")
    if len(uploads) > clf.config.max_batch:
        raise ApiError(422, "too_many_images", f"at most {clf.config.max_batch} images per batch")
    with slot():
        results = clf.classify([data for _, data in uploads])
    g.answer = {"images": len(results), "labels": [r.label for r in results if isinstance(r, Prediction)],
                "model_sha256": clf.bundle.sha256}
    answers = [
        {"filename": name, **(error_json(r) if isinstance(r, ImageError) else prediction_json(r, k))}
        for (name, _), r in zip(uploads, results)
    ]
    return jsonify({"results": answers, "model": model_json(), "request_id": g.request_id})


@bp.post("/predict")
def predict_legacy():
    """The old project's route and answer shape, so existing kiosk clients keep working."""
    _require_ready()
    filename, data = single_upload(("file", "image"))
    result = classify_one(data)
    answered(result)
    return jsonify({
        "filename": filename,
        "class": result.label,
        "confidence": f"{100 * result.confidence:.2f}%",
        "confidence_score": round(result.confidence, 4),
    })


@bp.get("/v1/model")
def model_info():
    bundle = classifier().bundle
    return jsonify({**bundle.to_json(), "ready": classifier().runtime.ready.is_set()})


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "alive"})


def not_ready() -> ApiError | None:
    """Why this worker should get no new work (draining, or not warmed up), or None."""
    clf = current_app.extensions.get("ecosort")
    if current_app.extensions.get("ecosort.draining"):
        return ApiError(503, "draining", "this worker is shutting down; retry on another", {"Retry-After": "1"})
    if clf is None or not clf.runtime.ready.is_set():
        return ApiError(503, "not_ready", "the model is not loaded and warmed up yet", {"Retry-After": "1"})
    return None


@bp.get("/readyz")
def readyz():
    if (refusal := not_ready()) is not None:
        raise refusal
    return jsonify({"status": "ready", "model": model_json()})


# KServe / Open Inference Protocol v2: health and metadata, so standard probes and
# gateways work unchanged. Inference stays on /v1 (images, not tensors).
@bp.get("/v2/health/live")
def v2_live():
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def v2_ready():
    ready = not_ready() is None
    return jsonify({"ready": ready}), 200 if ready else 503


@bp.get("/v2")
def v2_server():
    return jsonify({"name": "ecosort", "version": "1", "extensions": []})


def _served(name: str):
    bundle = classifier().bundle
    if name != bundle.name:
        raise ApiError(404, "not_found", f"no model {name!r}; this server has {bundle.name!r}")
    return bundle


@bp.get("/v2/models/<name>")
def v2_model(name: str):
    bundle = _served(name)
    shape = [-1 if d is None else d for d in bundle.input.shape]
    return jsonify({"name": bundle.name, "versions": [bundle.sha256], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": bundle.input.name, "datatype": "FP32", "shape": shape}],
                    "outputs": [{"name": bundle.output, "datatype": "FP32", "shape": [-1, len(bundle.classes)]}],
                    "parameters": {"classes": list(bundle.classes)}})


@bp.get("/v2/models/<name>/ready")
def v2_model_ready(name: str):
    _served(name)
    return v2_ready()


@bp.get("/metrics")
def prometheus():
    return Response(metrics.render(), mimetype=metrics.CONTENT_TYPE.split(";")[0])


@bp.get("/openapi.json")
def openapi():
    return Response(current_app.extensions["ecosort.openapi"], mimetype="application/json")


@bp.get("/")
def index():
    return Response(current_app.extensions["ecosort.page"], mimetype="text/html")
