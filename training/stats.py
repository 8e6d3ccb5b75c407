"""How far a count of right answers can be trusted: per-class recall, Wilson intervals, McNemar.

With a few dozen pictures of a class one picture is several points, so a recall means
little without its interval, and two models scored on the same pictures are compared on the
pictures where they disagree (McNemar), not on two separate accuracies.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def per_class_recall(pred: torch.Tensor, targets: torch.Tensor, n_classes: int) -> list[float]:
    """Recall of each class; nan for a class with no picture in this set."""
    return [float((pred[targets == c] == c).float().mean()) if (targets == c).any() else math.nan
            for c in range(n_classes)]


def lowest(recall: list[float]) -> tuple[int, float]:
    """(class index, recall) of the worst class present; absent classes (nan) are skipped."""
    present = [(r, c) for c, r in enumerate(recall) if not math.isnan(r)]
    r, c = min(present)
    return c, r


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sane at 0, 1 and small n, unlike the normal one."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (A right and B wrong, and the reverse)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(a: np.ndarray, b: np.ndarray, z: float = 1.96) -> dict:
    """A against B, right (1) or wrong (0) on the same pictures, each row one picture and its
    copies (a corruption suite's 35): the mean difference with a normal 95% interval over
    pictures, since copies of one picture are not independent of each other."""
    a, b = np.asarray(a, float).reshape(len(a), -1), np.asarray(b, float).reshape(len(b), -1)
    if a.shape != b.shape or not len(a):
        raise ValueError(f"cannot pair {a.shape} with {b.shape}")
    d = a.mean(1) - b.mean(1)
    half = z * math.sqrt(d.var() / len(d))
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    return {"pictures": len(d), "copies": a.shape[1], "a_accuracy": float(a.mean()), "b_accuracy": float(b.mean()),
            "difference": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "only_a": only_a, "only_b": only_b,
            "mcnemar_p": mcnemar(only_a, only_b) if a.shape[1] == 1 else None}
