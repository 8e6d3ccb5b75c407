"""Training losses."""

from __future__ import annotations

import torch
from torch import nn


class OutlierExposureLoss(nn.Module):
    """Cross-entropy on labelled pictures plus, for frames with target -1, cross-entropy
    to the uniform distribution (Hendrycks et al., 2019): no object, no favourite class.
    With soft targets (distillation) an all-zero row marks such a frame."""

    def __init__(self, base: nn.Module, weight: float = 0.5):
        super().__init__()
        self.base, self.weight = base, weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = targets >= 0 if targets.ndim == 1 else targets.sum(1) > 0
        loss = self.base(logits[known], targets[known]) if known.any() else logits.sum() * 0
        if not known.all():
            loss = loss + self.weight * -logits[~known].log_softmax(1).mean(1).mean()
        return loss
