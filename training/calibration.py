"""Temperature scaling (Guo et al., 2017) and expected calibration error."""

from __future__ import annotations

import torch


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T that minimises validation NLL of softmax(logits / T); one parameter, no overfit."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


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
