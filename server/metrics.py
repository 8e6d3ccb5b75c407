"""Prometheus metrics, correct under several gunicorn workers.

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module;
each worker then writes its samples to files there and /metrics merges them.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

# ms-scale buckets: the kiosk budget is tens of milliseconds.
BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("ecosort_requests_total", "HTTP requests by route and status", ["route", "method", "status"])
LATENCY = Histogram("ecosort_request_seconds", "HTTP request latency by route", ["route"], buckets=BUCKETS)
STAGE = Histogram("ecosort_stage_seconds", "Latency of each classification stage", ["stage"], buckets=BUCKETS)
PREDICTIONS = Counter("ecosort_predictions_total", "Predictions by label", ["label"])
UNCERTAIN = Counter("ecosort_uncertain_total", "Predictions under the bundle's confidence threshold")
REJECTED = Counter("ecosort_rejected_images_total", "Uploads refused as bad input, by error code", ["code"])


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
