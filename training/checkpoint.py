"""Checkpoint I/O: what a `best.pt` holds, written atomically, read back into a model."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .models import build_model


def atomic_save(obj: dict, path: Path) -> None:
    """Written beside and renamed: a run killed mid-save keeps its previous best.pt whole."""
    tmp = Path(path).with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model, args, classes, spec, epoch: int, val: dict, **extra) -> None:
    atomic_save({
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "backbone": args.backbone,
        "strategy": args.strategy,
        "classes": classes,
        "preprocess": spec,
        "epoch": epoch,
        "val": val,
        "manifest": str(args.manifest),
        "data": str(args.data),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not callable(v)},
        **extra,
    }, path)


def load_checkpoint(path: Path):
    """Rebuild the model from a checkpoint alone: architecture, classes, preprocessing."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["backbone"], len(ckpt["classes"]), pretrained=False)
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval(), ckpt


def same_split(paths: list[Path], ckpts: list[dict]) -> None:
    """Checkpoints to be compared or combined must share classes and split manifest."""
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        for key in ("classes", "manifest"):
            if ckpt[key] != ckpts[0][key]:
                raise ValueError(f"{path} has {key} {ckpt[key]}, {paths[0]} has {ckpts[0][key]}")
