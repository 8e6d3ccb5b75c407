"""Fold results from separate runs as one: `python -m training pool CV_JSON... --out DIR`.

A recipe's fold networks are not always fitted in one session, and a machine's `runs/`
does not outlive it; their committed `cv.json` files keep every held-out picture's
probabilities. Pooling them gives the cv.json that one run over all the folds would
have given, so `pair`, `selective` and export's calibration read it the same way.
`--as OLD=NEW` reads recipe OLD as NEW where a file holds it (an int8 graph measured
unfused on a CPU without VNNI stands for the same graph measured fused on one with it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .cv import against_fp32, stored, write

log = logging.getLogger(__name__)
FLOOR = 1e-6  # stored probabilities are rounded: none is taken as surer than this


def renamed(predictions: dict, renames: dict[str, str]) -> dict:
    out = dict(predictions)
    for old, new in renames.items():
        if old in out:
            out[new] = out.pop(old)
    return out


def pool(results: list[dict], renames: dict[str, str]) -> tuple[list[str], dict[str, dict]]:
    """{recipe: {picture: (probabilities, target)}} over the recipes every result holds."""
    classes = results[0]["classes"]
    if any(r["classes"] != classes for r in results):
        raise ValueError("the results have different classes")
    recipes = [renamed(r["predictions"], renames) for r in results]
    names = [n for n in recipes[0] if all(n in r for r in recipes)]
    if not names:
        raise ValueError("no recipe is in every result")
    pooled: dict[str, dict] = {n: {} for n in names}
    for r in recipes:
        for n in names:
            overlap = set(pooled[n]) & set(r[n])
            if overlap:
                raise ValueError(f"{len(overlap)} pictures are in two results, e.g. {sorted(overlap)[0]}")
            pooled[n].update({k: (torch.tensor(v["probabilities"]).clamp_min(FLOOR), v["target"])
                              for k, v in r[n].items()})
    return classes, pooled


def main(paths: list[Path], out: Path, renames: dict[str, str]) -> dict:
    results = [json.loads(Path(p).read_text()) for p in paths]
    classes, pooled = pool(results, renames)
    scores, pairs, table = against_fp32(pooled, classes)
    log.info("\n%s", table)
    result = {"size": results[0].get("size"), "classes": classes, "sources": [str(p) for p in paths],
              "checkpoints": [c for r in results for c in r.get("checkpoints", [])], "renamed": renames,
              "scores": scores, "paired": pairs, "predictions": stored(pooled)}
    write(result, table, out)
    return result
