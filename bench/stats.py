"""Percentiles and the small timing helpers every mode shares."""

from __future__ import annotations

import time

import numpy as np


def summary(ms: list[float], images: int = 1) -> dict:
    a = np.asarray(ms, np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean()),
            "images_per_s": float(1000.0 * images / np.percentile(a, 50))}


def interleave(cases: dict, runs: int, warmup: int, gap_s: float, progress=None) -> dict[str, dict[str, list]]:
    """Run every case once per round, in turn, with a gap so spinning threads settle.

    Each case returns {stage: ms}. Interleaving makes drift on this shared machine hit
    every case alike, so ratios between cases mean something even when absolutes move.
    """
    times: dict[str, dict[str, list[float]]] = {k: {} for k in cases}
    for i in range(warmup + runs):
        for name, fn in cases.items():
            time.sleep(gap_s)
            stages = fn()
            if i >= warmup:
                for stage, ms in stages.items():
                    times[name].setdefault(stage, []).append(ms)
        if progress is not None:
            progress.update(1)
    return times
