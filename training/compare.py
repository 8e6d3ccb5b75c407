"""`python -m training compare`: checkpoints alone and as one ensemble, at several input sizes.

The table that picks what `python -m export` ships: the choice is made on validation
accuracy; the test columns are printed beside it for the record, not for choosing.
An ensemble here is the mean of the members' probabilities, as export's graph computes it.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import data, presets, stats
from .checkpoint import load_checkpoint, same_split
from .engine import predict
from .models import Views, spec_at_size

log = logging.getLogger(__name__)
SPLITS = ("val", "test")


def probabilities(model: torch.nn.Module, ckpt: dict, data_root: Path, sizes: list[int],
                  splits: tuple[str, ...] = SPLITS, views: int = 1, autocontrast: float | None = None) -> dict:
    """{(size, split): (probabilities, targets)} for one network, averaged over `views` flips;
    with `autocontrast`, each crop is stretched first (presets.AutoContrast)."""
    manifest = data.read_manifest(ckpt["manifest"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a lent GPU scores folds there
    model = (Views(model, views) if views > 1 else model).to(device)
    out = {}
    for size in sizes:
        spec = spec_at_size(ckpt["preprocess"], size)
        tf = presets.eval_preset(**(spec if autocontrast is None else {**spec, "autocontrast": autocontrast}))
        for split in splits:
            images = data.ImageList(data_root, data.split_of(manifest, split), tf)
            logits, targets = predict(model, DataLoader(images, batch_size=32, num_workers=1), device)
            out[size, split] = logits.softmax(1), targets
    return out


def scores(probs: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    pred = probs.argmax(1)
    worst, recall = stats.lowest(stats.per_class_recall(pred, targets, len(classes)))
    return {"accuracy": (pred == targets).float().mean().item(), "n": len(targets),
            "lowest_recall": recall, "lowest_recall_class": classes[worst]}


def compare(checkpoints: list[Path], data_root: Path, sizes: list[int], max_members: int = 0) -> list[dict]:
    loaded = {p: load_checkpoint(p) for p in checkpoints}  # each file once, even if named twice
    same_split(checkpoints, [loaded[p][1] for p in checkpoints])
    classes = loaded[checkpoints[0]][1]["classes"]
    each = {p: probabilities(model, ckpt, data_root, sizes) for p, (model, ckpt) in loaded.items()}
    # Every network alone and every ensemble of two or more of them (up to max_members:
    # each member adds its full latency on the kiosk).
    largest = min(max_members or len(checkpoints), len(checkpoints))
    candidates = {" + ".join(map(str, group)): list(group)
                  for r in range(1, largest + 1) for group in itertools.combinations(checkpoints, r)}
    rows = []
    for size in sizes:
        for name, members in candidates.items():
            row = {"model": name, "size": size}
            for split in SPLITS:
                mean = torch.stack([each[p][size, split][0] for p in members]).mean(0)
                row[split] = scores(mean, each[members[0]][size, split][1], classes)
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(s: dict) -> str:
        return f"{100 * s['accuracy']:.2f}% | {100 * s['lowest_recall']:.1f}% ({s['lowest_recall_class']})"

    lines = ["| model | input | val top-1 | val lowest recall | test top-1 | test lowest recall |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['size']} | {pct(r['val'])} | {pct(r['test'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def run(checkpoints: list[Path], data_root: Path, sizes: list[int], out: Path | None,
        max_members: int = 0) -> list[dict]:
    rows = compare(checkpoints, data_root, sizes, max_members)
    table = markdown(rows)
    log.info("\n%s", table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(rows, indent=1) + "\n")
        (out / "compare.md").write_text(table)
    return rows
