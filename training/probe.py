"""Linear probe: the head fitted on frozen pretrained features before fine-tuning (LP-FT).

Kumar et al. (2022): fine-tuning from a random head distorts the pretrained features
while the head is still wrong, and that costs off-domain accuracy. Starting from the
probe's head, the first steps' gradients are small and the features move less.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)


@torch.no_grad()
def features(model, loader) -> tuple[np.ndarray, np.ndarray]:
    """Pooled penultimate features (timm's pre-logits) over a loader, model in eval mode."""
    model.eval()
    feats, targets = [], []
    for images, target in loader:
        feats.append(model.forward_head(model.forward_features(images), pre_logits=True).numpy())
        targets.append(target.numpy())
    return np.concatenate(feats), np.concatenate(targets)


def fit_probe(model, loader, balanced: bool, c: float = 0.02) -> float:
    """Fit a logistic regression on frozen features and write it into the model's classifier;
    returns its training accuracy. A strong L2 penalty keeps its logits moderate, so
    fine-tuning starts from small gradients (the point of LP-FT). Standardisation is folded into the linear layer."""
    x, y = features(model, loader)
    known = y >= 0
    x, y = x[known], y[known]
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None)
    clf.fit(scaler.transform(x), y)
    scale = 1 / scaler.scale_
    weight = clf.coef_ * scale
    bias = clf.intercept_ - weight @ scaler.mean_
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).float())
        head.bias.copy_(torch.from_numpy(bias).float())
    accuracy = float(clf.score(scaler.transform(x), y))
    log.info("linear probe on %d frozen feature vectors: train accuracy %.4f", len(y), accuracy)
    return accuracy
