"""Prometheus metrics, correct under several gunicorn workers.

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module;
each worker then writes its samples to files there and /metrics merges them.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# ms-scale buckets: the kiosk budget is tens of milliseconds.
BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)

# Every label takes values from a closed set: a client cannot grow the series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
REQUESTS = Counter("ecosort_requests_total", "HTTP requests by route, method and status class",
                   ["route", "method", "status"])
LATENCY = Histogram("ecosort_request_duration_seconds", "HTTP request latency by route", ["route"], buckets=BUCKETS)
STAGE = Histogram("ecosort_stage_duration_seconds", "Latency of each classification stage", ["stage"],
                  buckets=BUCKETS)
# "live" modes: a worker that exits (a crash, a model swap) leaves the sums.
IN_FLIGHT = Gauge("ecosort_requests_in_flight", "Requests being served now", multiprocess_mode="livesum")
MODEL = Gauge("ecosort_model_info", "The bundle each live worker serves (value 1)", ["name", "sha256"],
              multiprocess_mode="livemax")
RSS = Gauge("ecosort_worker_resident_memory_bytes", "Resident memory of each worker at start and after each request",
            multiprocess_mode="liveall")
PREDICTIONS = Counter("ecosort_predictions_total", "Predictions by label", ["label"])
UNCERTAIN = Counter("ecosort_uncertain_total", "Predictions under the bundle's confidence threshold")
SHED = Counter("ecosort_shed_total", "Requests refused with 503 overloaded")
REJECTED = Counter("ecosort_rejected_images_total", "Uploads refused as bad input, by error code", ["code"])


def status_class(status: int) -> str:
    """Exact codes the API answers with, else the class (2xx ... 5xx)."""
    return str(status) if status in KNOWN_STATUSES else f"{status // 100}xx"


KNOWN_STATUSES = frozenset({200, 201, 400, 401, 404, 405, 409, 413, 415, 422, 429, 500, 503, 507})


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
