"""One JSON object a line for every log record, with the request's id and route while a
request is being served (python-json-logger), and one line per request with its
status, latency and, for a classification, its answer."""

from __future__ import annotations

import functools
import logging
import time

from flask import Response, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

log = logging.getLogger("server.request")
FIELDS = ("asctime", "levelname", "name", "message")
RENAME = {"asctime": "time", "levelname": "level", "name": "logger"}


@functools.cache  # once per process, whatever number of apps it makes
def add_request_fields() -> None:
    """Every record made while a request is served (the 500 handler's traceback line
    included) carries its request_id and route, whichever handler writes it."""
    make = logging.getLogRecordFactory()

    def record(*args, **kwargs) -> logging.LogRecord:
        rec = make(*args, **kwargs)
        if has_request_context():
            rec.request_id = g.get("request_id", "")
            rec.route = request.url_rule.rule if request.url_rule else "unmatched"
        return rec

    logging.setLogRecordFactory(record)


def formatter() -> logging.Formatter:
    return JsonFormatter(FIELDS, rename_fields=RENAME, datefmt="%Y-%m-%dT%H:%M:%S%z", json_ensure_ascii=True)


def use_json(*loggers: logging.Logger) -> None:
    """Give these loggers' handlers (the root's if none) the JSON format."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            handler.setFormatter(formatter())


def request_line(response: Response) -> None:
    """The request's own line: what an access log says, plus the answer given."""
    fields = {"method": request.method, "status": response.status_code}
    if "start" in g:
        fields["latency_ms"] = round((time.perf_counter() - g.start) * 1000, 2)
    fields.update(g.get("answer", {}))
    log.info("request", extra=fields)
