"""BatchNorm statistics gathered again at the serving size (FixRes, Touvron et al. 2019).

A network trained on random crops at one size and served on centre crops at a larger
one sees activations of another scale than its running statistics describe; and WiSE-FT
mixes the probe's statistics with the fine-tuned network's linearly, which matches
neither network's activations (REPAIR, Jordan et al. 2022). Only statistics move: the
weights stay as they are. The pictures are the checkpoint's own training pictures under
its own recipe's augmentation, drawn at the new size, so nothing held out is looked at.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_save, load_checkpoint
from .data import read_manifest
from .models import apply_strategy, set_train_mode, spec_at_size
from .train import get_args_parser, make_loaders, seed_everything

log = logging.getLogger(__name__)

PATHS = ("data", "manifest", "feedback", "teacher", "out", "weights", "init_from")


def training_args(ckpt: dict, data_root: Path) -> argparse.Namespace:
    """The fit's own arguments, read back from its checkpoint, with this machine's data root;
    an option the checkpoint predates takes fit's default, as the fit itself did."""
    args = vars(get_args_parser().parse_args(["--data", str(data_root)]))
    args.update(ckpt["args"])
    for key in PATHS:
        if args.get(key) is not None:
            args[key] = Path(args[key])
    args.update(data=Path(data_root), teacher=None, device="cpu", camera_faults=tuple(args["camera_faults"]))
    return argparse.Namespace(**args)


@torch.no_grad()
def gather(model: nn.Module, loader, passes: int) -> int:
    """Running statistics of the layers training updated, averaged evenly over every batch
    of `passes` passes (momentum None), not weighted towards the last ones."""
    set_train_mode(model)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    for _ in range(passes):
        for images, _ in loader:
            model(images.contiguous(memory_format=torch.channels_last))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
    return len(layers)


def main(checkpoint: Path, data_root: Path, size: int, out: Path, passes: int = 1, workers: int | None = None) -> Path:
    model, ckpt = load_checkpoint(checkpoint)
    args = training_args(ckpt, data_root)
    if workers is not None:
        args.workers = workers
    seed_everything(args.seed)
    # the frozen stages kept their ImageNet statistics in training; they keep them here
    apply_strategy(model, ckpt["backbone"], ckpt["strategy"], args.frozen_stages)
    model.to(memory_format=torch.channels_last)
    loader, _, _ = make_loaders(args, read_manifest(args.manifest), spec_at_size(ckpt["preprocess"], size), False)
    n = gather(model, loader, passes)
    log.info("%d BatchNorm layers gathered again at %d px over %d batches x %d", n, size, len(loader), passes)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_save({**ckpt, "model": {k: v.contiguous() for k, v in model.state_dict().items()},
                 "bn_size": size, "bn_passes": passes}, out)
    return Path(out)
