"""Server settings, read once from the environment into a frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "ecosort.json"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return max(1, min(2, cores()))


@dataclass(frozen=True)
class Config:
    model: Path = DEFAULT_MODEL  # bundle JSON
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    min_side: int = 16
    # Longest side over shortest: a 16x100000 strip is few pixels, but resized to the
    # model's short side it is gigabytes. Panoramas from phones stay well under it.
    max_aspect_ratio: float = 8.0
    # Pixels a worker decodes at once (server/classify.py, PixelBudget): with the largest
    # frame allowed, one decode at a time, which bounds a worker's peak memory.
    decode_pixels: int = 40_000_000
    max_batch: int = 16
    # Images per onnxruntime run in a batch request: peak memory follows the run, not the batch.
    max_run_batch: int = 4
    # 0: all cores in every worker. With spinning off a worker's idle threads sleep, so the
    # two workers share the cores without stealing them, and a lone request (a kiosk's usual
    # load) gets both: README "Speed", serving settings.
    ort_threads: int = 0
    ort_spinning: bool = False
    ort_arena: bool = True
    # onnxruntime's memory pattern pre-plans one block for all of a run's activations per input
    # shape, on top of the arena; off, the arena reuses buffers as the run goes (docs/serving.md).
    ort_mem_pattern: bool = False
    # Session runs a worker does at once. Each concurrent run keeps its own activations in the
    # arena, and one run already keeps the cores busy.
    ort_parallel_runs: int = 1
    fast_decode: bool = True  # JPEG DCT-domain downscale for large frames (see README)
    # Per worker: requests at work at once, and how many more may wait in the app; past
    # that a 503 comes at once. With as many slots as gunicorn threads the gate never
    # sheds: the front sheds (server/front.py), and docs/serving.md says why not here.
    max_inflight: int = 4
    max_queue: int = 8
    queue_timeout_s: float = 5.0
    api_token: str = ""
    feedback_dir: str = ""
    feedback_max_mb: float = 500.0
    station_id: str = ""  # written into each feedback record
    cors_origins: str = ""  # comma-separated origins allowed to call the API from a browser
    kiosk_config: str = ""  # JSON file: the page's bins, colours and words (server/kiosk.py)
    # gunicorn (server/gunicorn.conf.py reads these too: one source of settings)
    bind: str = "0.0.0.0:8000"
    front_bind: str = ""  # `python -m server front`: nginx listens here, gunicorn on BIND
    web_concurrency: int = 0  # workers; 0: one per core, at most 2
    gunicorn_threads: int = 4  # threads overlap one request's decode with another's inference
    gunicorn_timeout: int = 30
    gunicorn_graceful_timeout: int = 20
    gunicorn_keepalive: int = 5
    client_timeout: float = 10.0  # seconds a connection may sit in one read
    access_log: str = ""  # file for gunicorn's access log, '-' for stderr, empty for none
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.ort_parallel_runs < 1:
            raise ValueError(f"ORT_PARALLEL_RUNS must be at least 1, not {self.ort_parallel_runs}")
        if self.decode_pixels < 1:
            raise ValueError(f"DECODE_PIXELS must be at least 1, not {self.decode_pixels}")
        if self.max_run_batch < 1:
            raise ValueError(f"MAX_RUN_BATCH must be at least 1, not {self.max_run_batch}")

    @property
    def workers(self) -> int:
        return self.web_concurrency if self.web_concurrency > 0 else default_workers()

    @property
    def threads(self) -> int:
        """onnxruntime intra-op threads: all the cores, unless set."""
        return self.ort_threads if self.ort_threads > 0 else cores()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Config:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        names = {f.name: f for f in fields(cls)}
        for name, f in names.items():
            key = name.upper()
            if key in env and env[key] != "":
                values[name] = _parse(env[key], type(f.default), key)
        return replace(cls(**values), **overrides)


def _parse(text: str, kind: type, key: str) -> Any:
    try:
        if kind is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes", "on")
        return Path(text) if issubclass(kind, Path) else kind(text)
    except ValueError:
        raise ValueError(f"environment variable {key}={text!r} is not a valid {kind.__name__}") from None
