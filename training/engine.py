"""One epoch of training, one pass of evaluation (torchvision references' engine)."""

from __future__ import annotations

import logging
import time

import torch
from tqdm import tqdm

from .models import set_train_mode

log = logging.getLogger(__name__)


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def train_one_epoch(model, criterion, optimizer, scheduler, loader, device, epoch: int,
                    scaler=None, channels_last: bool = False, show_progress: bool = True, ema=None,
                    mix=None) -> dict:
    set_train_mode(model)
    total, correct, loss_sum, start = 0, 0, 0.0, time.time()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show_progress)
    for images, targets in bar:
        images, targets = _to(images, device, channels_last), targets.to(device)
        if mix is not None:
            images, targets = mix(images, targets)
        with torch.autocast(device.type, enabled=scaler is not None):
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()  # per step: the cosine curve is smooth even over few epochs
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        total += len(targets)
        correct += (logits.argmax(1) == hard_labels(targets)).sum().item()
        loss_sum += loss.item() * len(targets)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1), "seconds": time.time() - start}


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices of a batch's targets; soft targets give their argmax, all-zero rows -1."""
    if targets.ndim == 1:
        return targets
    return torch.where(targets.sum(1) > 0, targets.argmax(1), -1)


@torch.no_grad()  # not inference_mode: calibration backprops through these logits
def predict(model, loader, device, channels_last: bool = False, show_progress: bool = False):
    """Logits and targets over a loader, model in eval mode."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not show_progress):
        all_logits.append(model(_to(images, device, channels_last)).float().cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(model, criterion, loader, device, channels_last: bool = False) -> dict:
    logits, targets = predict(model, loader, device, channels_last)
    loss = criterion(logits, targets).item()
    return {"loss": loss, "acc": (logits.argmax(1) == targets).float().mean().item()}
