"""WiSE-FT (Wortsman et al., 2022): the fine-tuned weights interpolated towards the probe's.

`probe.pt` is the pretrained backbone with its linear-probe head (training --probe);
`best.pt` is the fine-tuned network. (1 - alpha) * probe + alpha * fine-tuned keeps
much of the fine-tuned in-domain accuracy and recovers some of the pretrained features'
robustness. The same architecture on both ends, so the result is one network.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import atomic_save

log = logging.getLogger(__name__)


def interpolate(probe: dict, finetuned: dict, alpha: float) -> dict:
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be within [0, 1], not {alpha}")
    for key in ("backbone", "classes", "preprocess", "manifest"):
        if probe[key] != finetuned[key]:
            raise ValueError(f"probe and fine-tuned checkpoints differ in {key}: not one network")
    mixed = {}
    for name, tuned in finetuned["model"].items():
        start = probe["model"][name]
        mixed[name] = (start + alpha * (tuned - start)).to(tuned.dtype) if tuned.is_floating_point() else tuned
    out = {k: v for k, v in finetuned.items() if k not in ("temperature", "metrics")}
    return {**out, "model": mixed, "wise_alpha": alpha}


def main(probe: Path, finetuned: Path, alpha: float, out: Path) -> Path:
    a, b = (torch.load(p, map_location="cpu", weights_only=False) for p in (probe, finetuned))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_save(interpolate(a, b, alpha), out)
    log.info("WiSE-FT alpha %.2f: %s", alpha, out)
    return Path(out)
