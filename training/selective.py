"""When to say "not sure": the risk-coverage curve and the threshold chosen on it.

A picture is answered when its calibrated top probability reaches the threshold. The
rule (issue 21): the lowest threshold whose answered pictures are at least
`target_accuracy` right, so that as many as possible are answered; coverage at that
threshold is reported beside it, met or not.
"""

from __future__ import annotations

import numpy as np


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """For each distinct confidence, answering those at or above it: coverage and accuracy."""
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(correct[order])
    rows, n = [], len(conf)
    for i in range(n):
        if i + 1 < n and conf[i + 1] == conf[i]:
            continue
        rows.append({"threshold": float(conf[i]), "coverage": (i + 1) / n, "accuracy": float(hits[i] / (i + 1))})
    return rows


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float = 0.98) -> dict:
    """The lowest threshold at which the answered pictures are at least `target_accuracy`
    right: the most coverage the target allows. (The curve's first few points rest on a
    handful of pictures, so a dip there does not end the search.)"""
    rows = risk_coverage(confidence, correct)
    good = [row for row in rows if row["accuracy"] >= target_accuracy]
    chosen = good[-1] if good else rows[0]
    return {**chosen, "target_accuracy": target_accuracy, "met": chosen["accuracy"] >= target_accuracy}


def curve_points(rows: list[dict], coverages=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)) -> list[dict]:
    """The curve at a few coverages, for a report table."""
    out = []
    for c in coverages:
        row = next((r for r in rows if r["coverage"] >= c - 1e-9), rows[-1])
        out.append(row)
    return out


def score_at(probabilities: np.ndarray, targets: np.ndarray, temperature: float, threshold: float) -> dict:
    """Stored out-of-fold probabilities (temperature 1) answered as a bundle would: divided
    by `temperature` in log space, 'not sure' below `threshold`. Their rounding is why
    probabilities are floored before the log."""
    from .stats import wilson

    logits = np.log(np.clip(probabilities, 1e-6, None)) / temperature
    calibrated = np.exp(logits - logits.max(1, keepdims=True))
    calibrated /= calibrated.sum(1, keepdims=True)
    answered = calibrated.max(1) >= threshold
    right = int((calibrated.argmax(1) == targets)[answered].sum())
    return {"pictures": len(targets), "temperature": temperature, "threshold": threshold,
            "coverage": float(answered.mean()), "answered": int(answered.sum()),
            "accuracy": right / max(int(answered.sum()), 1), "ci": list(wilson(right, int(answered.sum())))}


def score_file(path, name: str | None, temperature: float, threshold: float) -> dict:
    """`python -m training selective CV_JSON`: a cv.json's predictions at a given calibration."""
    import json
    from pathlib import Path

    from .pair import _recipe

    predictions = _recipe(json.loads(Path(path).read_text()), name, Path(path))
    probabilities = np.array([p["probabilities"] for p in predictions.values()], np.float64)
    targets = np.array([p["target"] for p in predictions.values()])
    result = score_at(probabilities, targets, temperature, threshold)
    print(json.dumps(result, indent=1))
    return result
