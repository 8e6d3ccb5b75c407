"""Temperature scaling (Guo et al., 2017) and expected calibration error."""

from __future__ import annotations

import torch

from . import stats


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T that minimises validation NLL of softmax(logits / T); one parameter, no overfit.

    T stays within [e^-4, e^4]: a network no better than chance (an untrained one, in
    tests) would otherwise drive it to infinity or NaN, which no bundle may carry.
    """
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.clamp(-4, 4).exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    log_t = log_t.detach().clamp(-4, 4)
    return float(log_t.exp()) if torch.isfinite(log_t).all() else 1.0


def ece(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, bins: int = 15) -> float:
    """Expected calibration error over equal-width confidence bins."""
    probs = torch.softmax(logits / temperature, dim=1)
    conf, pred = probs.max(1)
    correct = (pred == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs()
    return float(total)


def prior_offsets(counts, tau: float) -> torch.Tensor:
    """Logit adjustment (Menon et al., 2021): -tau * log(class frequency), centred (softmax ignores a shift)."""
    offsets = -tau * torch.as_tensor(counts, dtype=torch.float64).clamp(min=1).log()
    return (offsets - offsets.mean()).float()


def lowest_recall(logits: torch.Tensor, targets: torch.Tensor) -> float:
    n_classes = max(logits.shape[1], int(targets.max()) + 1)
    return stats.lowest(stats.per_class_recall(logits.argmax(1), targets, n_classes))[1]


def fit_logit_adjustment(logits: torch.Tensor, targets: torch.Tensor, counts, max_drop: int = 2,
                         taus=None) -> float:
    """The tau that lifts the lowest class recall on val most, giving up at most max_drop correct images.

    One parameter for all classes, so it cannot be fitted to single pictures the way
    free per-class offsets could; ties go to the higher top-1, then the smaller tau.
    """
    taus = taus if taus is not None else [round(0.05 * i, 2) for i in range(61)]
    base = int((logits.argmax(1) == targets).sum())
    best_key, best_tau = None, 0.0
    for tau in taus:
        adjusted = logits + prior_offsets(counts, tau)
        correct = int((adjusted.argmax(1) == targets).sum())
        if correct < base - max_drop:
            continue
        key = (lowest_recall(adjusted, targets), correct)
        if best_key is None or key > best_key:  # strictly better only: the smaller tau wins ties
            best_key, best_tau = key, tau
    return best_tau


def fit_class_offset(logits: torch.Tensor, targets: torch.Tensor, cls: int, floor: float = 0.9,
                     offsets=None) -> float | None:
    """The smallest offset on class cls's logit that takes its recall to the floor (0 if it is there
    already); None if none does.

    A recall target is a floor on one class, so it is met by moving that class's decision
    threshold, not by reweighting all classes the way a tau does; the smallest offset that
    meets it costs the other classes least.
    """
    offsets = offsets if offsets is not None else [round(0.05 * i, 2) for i in range(61)]  # 0 to 3
    own = logits[targets == cls]
    for offset in offsets:
        shifted = own.clone()
        shifted[:, cls] += offset
        if float((shifted.argmax(1) == cls).float().mean()) >= floor - 1e-9:
            return offset
    return None
