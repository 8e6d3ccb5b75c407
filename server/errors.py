"""JSON errors for every failure: the same shape, the right status, no internals."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
         413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable", 503: "not_ready"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    body = {"error": {"code": code, "message": message}}
    if getattr(g, "request_id", None):
        body["request_id"] = g.request_id
    return jsonify(body), status, headers or {}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        message = {413: "the upload is over the size limit"}.get(status, exc.description or exc.name)
        methods = getattr(exc, "valid_methods", None)
        headers = {"Allow": ", ".join(methods)} if methods else {}
        return error_response(status, CODES.get(status, "http_error"), message, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # A bug, not bad input: log the traceback here, tell the client nothing internal.
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log with this request_id")
