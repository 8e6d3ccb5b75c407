"""MixUp and CutMix on a training batch (torchvision's), the pictures with no object left out."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.transforms import v2


class BatchMix:
    """Each batch, one of MixUp (alpha `mixup`) or CutMix (alpha `cutmix`) over its labelled
    pictures; an alpha of 0 leaves that one out.

    Frames with no object (target -1) are neither mixed nor mixed into: their target is
    'no class at all', which a blend with an object would contradict. The targets come back
    soft, one row per picture, all-zero for those frames (as `OutlierExposureLoss` reads them).
    """

    def __init__(self, n_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
        choices = [m(alpha=a, num_classes=n_classes) for m, a in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if a > 0]
        if not choices:
            raise ValueError("BatchMix needs a mixup or cutmix alpha above 0")
        self.n_classes, self.mix = n_classes, v2.RandomChoice(choices)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if targets.ndim != 1:
            raise ValueError("MixUp and CutMix take class indices, not soft targets (a teacher's)")
        known = targets >= 0
        soft = torch.zeros(len(targets), self.n_classes, device=targets.device)
        if known.sum() < 2:
            soft[known] = F.one_hot(targets[known], self.n_classes).float()
            return images, soft
        mixed, soft[known] = self.mix(images[known], targets[known])
        images = images.clone()
        images[known] = mixed
        return images, soft
