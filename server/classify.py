"""Bytes in, calibrated predictions out, with the time each stage took."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import metrics
from .config import Config
from .preprocess import ImageError, load_rgb, open_image, preprocess
from .runtime import Runtime


@dataclass
class Prediction:
    label: str
    confidence: float
    uncertain: bool
    ranked: list[tuple[str, float]]  # every class, most probable first
    timing_ms: dict[str, float]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class PixelBudget:
    """Pixels one worker decodes at once. A decoded frame and its resize's buffers hold
    several bytes a pixel until the resize is done, so a few of the largest allowed frames
    at once would multiply a worker's peak memory. A frame waits until its pixels fit (one
    larger than the budget, until the worker decodes nothing else); a decode is short and
    a worker has few threads, so the wait is bounded."""

    def __init__(self, pixels: int):
        self.total = self.free = pixels
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)
        with self._changed:
            self._changed.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        try:
            yield
        finally:
            with self._changed:
                self.free += pixels
                self._changed.notify_all()


class Classifier:
    def __init__(self, runtime: Runtime, config: Config):
        self.runtime, self.config = runtime, config
        self.bundle = runtime.bundle
        spec = self.bundle.preprocess
        # The fast path decodes JPEGs at 1/2..1/8 scale, never below the resize target,
        # then resizes only what the crop keeps; its cost in accuracy is in docs/serving.md.
        self.draft_to = spec.resize if config.fast_decode else None
        self.budget = PixelBudget(config.decode_pixels)

    @contextmanager
    def decoded(self, data: bytes, draft: bool = True) -> Iterator[Image.Image]:
        """The upright RGB image (JPEGs drafted, with `draft`), decoded within the worker's
        pixel budget, which it holds while the block works on the image."""
        image = open_image(data, self.config.max_pixels, self.config.min_side, self.draft_to if draft else None,
                           self.config.max_aspect_ratio)
        with self.budget.hold(image.width * image.height):
            yield load_rgb(image)

    def prepare(self, data: bytes) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        with self.decoded(data) as image:
            t1 = time.perf_counter()
            array = preprocess(image, self.bundle.preprocess, self.config.fast_decode)
        t2 = time.perf_counter()
        return array, {"decode": t1 - t0, "preprocess": t2 - t1}

    def classify(self, images: list[bytes]) -> list[Prediction | ImageError]:
        """One session run for every image that decodes; a bad image fails alone."""
        start = time.perf_counter()
        prepared: list[tuple[np.ndarray, dict[str, float]] | ImageError] = []
        for data in images:
            try:
                prepared.append(self.prepare(data))
            except ImageError as exc:
                metrics.REJECTED.labels(exc.code).inc()
                prepared.append(exc)
        good = [p for p in prepared if not isinstance(p, ImageError)]
        if not good:
            return prepared  # type: ignore[return-value]
        t0 = time.perf_counter()
        # A run's activations grow with its batch and the arena keeps its peak: bounded runs
        # bound a worker's memory whatever the batch size.
        step = self.config.max_run_batch
        arrays = [array for array, _ in good]
        logits = np.concatenate([self.runtime.infer(np.stack(arrays[i:i + step])) for i in range(0, len(arrays), step)])
        inference = time.perf_counter() - t0
        probs = self.runtime.probabilities(logits)
        total = time.perf_counter() - start
        rows = iter(probs)
        return [p if isinstance(p, ImageError) else self._prediction(next(rows), p[1], inference, total)
                for p in prepared]

    def _prediction(self, probs: np.ndarray, stages: dict[str, float], inference: float, total: float) -> Prediction:
        classes = self.bundle.classes
        order = np.argsort(-probs, kind="stable")
        label, confidence = classes[order[0]], float(probs[order[0]])
        uncertain = confidence < self.bundle.calibration.uncertain_below
        timing = {**stages, "inference": inference, "total": total}
        for stage, seconds in timing.items():
            metrics.STAGE.labels(stage).observe(seconds)
        metrics.PREDICTIONS.labels(label).inc()
        if uncertain:
            metrics.UNCERTAIN.inc()
        return Prediction(label, confidence, uncertain, [(classes[i], float(probs[i])) for i in order],
                          {k: _ms(v) for k, v in timing.items()})
