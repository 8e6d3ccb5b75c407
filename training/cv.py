"""k-fold cross-validation over train+val: a steadier signal for choosing a recipe.

One val split (a few hundred pictures, a few dozen of the smallest class) ranks networks points apart from
test, so a rule that picks by val picks noise. `folds` cuts train+val into k fold
manifests (stratified, near-duplicate groups kept whole, test items left out: they never
enter a fold); `fit --manifest FOLD` trains on k-1 folds and validates on the k-th as
usual; `cv` pools each recipe's out-of-fold predictions, so every train+val picture is
scored once per recipe (116 trash pictures instead of 20), and compares recipes on the
same pictures. The numbers are per recipe, not per network: the network that ships is
trained afterwards on the committed split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from . import data, stats
from .calibration import fit_class_offset, fit_logit_adjustment, fit_temperature, prior_offsets
from .checkpoint import load_checkpoint
from .compare import probabilities
from .constants import ANSWERED_ACCURACY
from .selective import choose_threshold, curve_points, risk_coverage

log = logging.getLogger(__name__)
POOL = ("train", "val")
ADJUSTMENT_MAX_DROP = 0.0025  # share of the pictures a fitted tau may give up
RECALL_FLOOR = 0.90  # the per-class recall target (selection-rule.md, step 4)


def pool_id(items: list[dict]) -> str:
    """Names the train+val pool, so folds cut from different manifests are never mixed."""
    return hashlib.sha256("\n".join(sorted(f"{it['path']} {it['sha256']} {it['label']}" for it in items))
                          .encode()).hexdigest()[:16]


def make_folds(manifest: dict, data_root: Path, k: int, seed: int) -> list[dict]:
    pool = [it for it in manifest["items"] if it["split"] in POOL]
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    # Near-duplicates (same object, another shot) must share a fold or val flatters the recipe.
    items = [data.Item(it["path"], it["sha256"], it["label"]) for it in pool]
    hashes = [data.dhash(data.open_rgb(Path(data_root) / it["path"])) for it in pool]
    groups = data.duplicate_groups(items, hashes, manifest.get("near_dup_bits", 0))
    labels = [it["label"] for it in pool]
    fold_of = np.empty(len(pool), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(pool)), labels, groups)):
        fold_of[held] = fold
    ident = pool_id(pool)
    folds = []
    for fold in range(k):
        cut = [dict(it, split="val" if fold_of[i] == fold else "train") for i, it in enumerate(pool)]
        counts = Counter((it["split"], it["label"]) for it in cut)
        folds.append({
            "classes": manifest["classes"], "seed": manifest.get("seed"),
            "near_dup_bits": manifest.get("near_dup_bits"),
            "cv": {"k": k, "fold": fold, "seed": seed, "pool": ident},
            "counts": {s: {c: counts[(s, c)] for c in manifest["classes"]} for s in POOL},
            "dropped": [], "items": cut,
        })
    return folds


def write_folds(manifest_path: Path, data_root: Path, k: int, seed: int, out: Path) -> list[Path]:
    folds = make_folds(data.read_manifest(manifest_path), data_root, k, seed)
    paths = []
    for fold in folds:
        path = Path(out) / f"fold-{fold['cv']['fold']}.json"
        data.write_manifest(fold, path)
        paths.append(path)
    log.info("%d fold manifests in %s (val sizes %s)", k, out,
             [sum(fold["counts"]["val"].values()) for fold in folds])
    return paths


def out_of_fold(checkpoints: list[Path], data_root: Path, size: int | None, classes: list[str],
                views: int = 1, autocontrast: float | None = None) -> tuple[dict, list[int], int]:
    """One recipe's pooled val predictions {path: (probabilities, target)}, its folds and k.

    Checkpoints trained on the same fold are averaged (an ensemble recipe, as export
    combines them); every fold may appear once and all must be cut from one pool.
    With views > 1 each network is first averaged over that many flips (models.Views).
    """
    by_fold: dict[int, list] = defaultdict(list)
    val_paths: dict[int, list[str]] = {}  # a fold's held-out pictures, in the order they are scored
    pools, ks = set(), set()
    for path in checkpoints:
        model, ckpt = load_checkpoint(path)
        if ckpt["classes"] != classes:
            raise ValueError(f"{path} has classes {ckpt['classes']}, the others {classes}")
        manifest = data.read_manifest(ckpt["manifest"])
        cv = manifest.get("cv")
        if cv is None:
            raise ValueError(f"{path} was not trained on a fold manifest (`python -m training folds`)")
        pools.add(cv["pool"])
        ks.add(cv["k"])
        by_fold[cv["fold"]].append((model, ckpt))
        val_paths.setdefault(cv["fold"], [p for p, _ in data.split_of(manifest, "val")])
    if len(pools) > 1 or len(ks) > 1:
        raise ValueError(f"checkpoints come from different fold sets: pools {sorted(pools)}, k {sorted(ks)}")
    pooled = {}
    for fold, members in sorted(by_fold.items()):
        at = size or members[0][1]["preprocess"]["crop"]
        runs = [probabilities(model, ckpt, data_root, [at], ("val",), views, autocontrast)[at, "val"]
                for model, ckpt in members]
        mean = torch.stack([p for p, _ in runs]).mean(0)
        pooled.update({p: (mean[i], int(runs[0][1][i])) for i, p in enumerate(val_paths[fold])})
    k = ks.pop()
    missing = sorted(set(range(k)) - set(by_fold))
    if missing:
        log.warning("folds %s missing: scores cover only %d pictures", missing, len(pooled))
    return pooled, sorted(by_fold), k


def recipe_scores(pooled: dict, classes: list[str]) -> dict:
    probs = torch.stack([p for p, _ in pooled.values()])
    targets = torch.tensor([t for _, t in pooled.values()])
    pred = probs.argmax(1)
    hits = int((pred == targets).sum())
    recall = stats.per_class_recall(pred, targets, len(classes))
    per_class = {}
    for i, c in enumerate(classes):
        n, called = int((targets == i).sum()), int((pred == i).sum())
        right = int(((pred == i) & (targets == i)).sum())
        per_class[c] = {"recall": recall[i], "n": n, "ci": stats.wilson(right, n),
                        "precision": right / called if called else 0.0, "called": called,
                        "precision_ci": stats.wilson(right, called)}
    worst, low = stats.lowest(recall)
    # The decision rule fitted on all out-of-fold pictures instead of one val split; the
    # pictures it may give up scale with the set.
    counts = [per_class[c]["n"] for c in classes]
    logits = probs.clamp_min(1e-12).log()
    tau = fit_logit_adjustment(logits, targets, counts, max_drop=round(ADJUSTMENT_MAX_DROP * len(targets)))
    adjusted_logits = logits + prior_offsets(counts, tau)
    adjusted = adjusted_logits.argmax(1)
    adj_worst, adj_low = stats.lowest(stats.per_class_recall(adjusted, targets, len(classes)))
    floor = {"plain": recall_floor(logits, targets, classes),
             "with_tau": recall_floor(adjusted_logits, targets, classes)}
    return {"n": len(targets), "accuracy": hits / len(targets), "ci": stats.wilson(hits, len(targets)),
            "per_class": per_class, "lowest_recall": low, "lowest_recall_class": classes[worst],
            "logit_adjustment": {"tau": tau, "accuracy": float((adjusted == targets).float().mean()),
                                 "lowest_recall": adj_low, "lowest_recall_class": classes[adj_worst]},
            "recall_floor": floor, "selective": selective_scores(logits, targets)}


def selective_scores(logits: torch.Tensor, targets: torch.Tensor, answered: float = ANSWERED_ACCURACY) -> dict:
    """The 'not sure' threshold chosen on every out-of-fold picture instead of one val split.

    One temperature is fitted on the pooled predictions (the recipe's calibration); the
    threshold is the lowest calibrated confidence at which the answered pictures are
    `answered` right. A bundle of this recipe may take it with `export --uncertain-below`."""
    temperature = fit_temperature(logits, targets)
    top, pred = (logits / temperature).softmax(1).max(1)
    conf, correct = top.numpy().astype(np.float64), (pred == targets).numpy()
    curve = risk_coverage(conf, correct)
    chosen = choose_threshold(conf, correct, answered)
    mask = conf >= chosen["threshold"]
    right = int(correct[mask].sum())
    at_90 = next(r for r in curve if r["coverage"] >= 0.9 - 1e-9)
    return {"temperature": temperature, "target_accuracy": answered, "threshold": chosen["threshold"],
            "coverage": float(mask.mean()), "answered": int(mask.sum()), "accuracy": right / max(int(mask.sum()), 1),
            "ci": stats.wilson(right, int(mask.sum())), "met": chosen["met"], "at_90_coverage": at_90,
            "curve": curve_points(curve)}


def recall_floor(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """The offset on the lowest class's logit that lifts its recall to RECALL_FLOOR, and what it costs."""
    before = logits.argmax(1)
    worst, low = stats.lowest(stats.per_class_recall(before, targets, len(classes)))
    offset = fit_class_offset(logits, targets, worst, RECALL_FLOOR) if low < RECALL_FLOOR else None
    shifted = logits.clone()
    shifted[:, worst] += offset or 0.0
    after = shifted.argmax(1)
    recall = stats.per_class_recall(after, targets, len(classes))
    new_worst, new_low = stats.lowest(recall)

    def precision(pred: torch.Tensor) -> float:  # of the pictures called `worst`, the share that are
        called = pred == worst
        return float((targets[called] == worst).float().mean()) if called.any() else float("nan")

    return {"class": classes[worst], "recall_before": low, "offset": offset,
            "accuracy_before": float((before == targets).float().mean()),
            "accuracy": float((after == targets).float().mean()),
            "precision_before": precision(before), "precision": precision(after),
            "recall": dict(zip(classes, recall)), "lowest_recall": new_low,
            "lowest_recall_class": classes[new_worst]}


def paired(a: dict, b: dict) -> dict:
    """A against B on the pictures both scored: the difference, its 95% interval and McNemar's p."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two sets of predictions share no picture")
    d = stats.paired_difference(*(np.array([int(r[p][0].argmax()) == r[p][1] for p in common], float) for r in (a, b)))
    return {"n": d["pictures"], "only_a": d["only_a"], "only_b": d["only_b"], "difference": d["difference"],
            "ci95": d["ci95"], "p": d["mcnemar_p"]}


def markdown(scores: dict, pairs: dict, classes: list[str]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.2f}%"

    lines = ["| recipe | pictures | top-1 (95% CI) | " + " | ".join(f"{c} recall" for c in classes)
             + " | logit adjustment: tau, top-1, lowest recall |",
             "| --- | --- | --- | " + " | ".join("---" for _ in classes) + " | --- |"]
    for name, s in scores.items():
        recalls = [f"{100 * s['per_class'][c]['recall']:.1f}% (n={s['per_class'][c]['n']})" for c in classes]
        adj = s["logit_adjustment"]
        lines.append(f"| {name} | {s['n']} | {pct(s['accuracy'])} ({pct(s['ci'][0])}-{pct(s['ci'][1])}) | "
                     + " | ".join(recalls) + f" | {adj['tau']:.2f}, {pct(adj['accuracy'])}, "
                     f"{100 * adj['lowest_recall']:.1f}% ({adj['lowest_recall_class']}) |")
    lines += ["", f"Recall floor ({100 * RECALL_FLOOR:.0f}%): the offset on the lowest class's logit that lifts its "
              "recall to the floor (selection-rule.md, step 4)", "",
              "| recipe | logits | class | recall | offset | top-1 | its precision | lowest recall after |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in scores.items():
        for kind, f in s["recall_floor"].items():
            offset = "none needed" if f["recall_before"] >= RECALL_FLOOR else (
                "none <= 3" if f["offset"] is None else f"+{f['offset']:.2f}")
            lines.append(f"| {name} | {kind} | {f['class']} | {100 * f['recall_before']:.1f}% | {offset} | "
                         f"{pct(f['accuracy_before'])} -> {pct(f['accuracy'])} | {pct(f['precision_before'])} -> "
                         f"{pct(f['precision'])} | {100 * f['lowest_recall']:.1f}% ({f['lowest_recall_class']}) |")
    lines += ["", f"'Not sure' threshold on the pooled predictions (one temperature per recipe; the lowest "
              f"calibrated confidence at which the answered pictures are {100 * ANSWERED_ACCURACY:.0f}% right), "
              "and precision (95% CI)", "",
              "| recipe | temperature | threshold | coverage | answered right (95% CI) | right at 90% coverage | "
              + " | ".join(f"{c} precision" for c in classes) + " |",
              "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + " |"]
    for name, s in scores.items():
        sel = s["selective"]
        precision = [f"{pct(s['per_class'][c]['precision'])} ({pct(s['per_class'][c]['precision_ci'][0])}-"
                     f"{pct(s['per_class'][c]['precision_ci'][1])})" for c in classes]
        lines.append(f"| {name} | {sel['temperature']:.3f} | {sel['threshold']:.4f} | {pct(sel['coverage'])} | "
                     f"{pct(sel['accuracy'])} ({pct(sel['ci'][0])}-{pct(sel['ci'][1])}) | "
                     f"{pct(sel['at_90_coverage']['accuracy'])} | " + " | ".join(precision) + " |")
    if pairs:
        lines += ["", "| A vs B | pictures | only A right | only B right | A - B (95% interval) | McNemar p |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {key} | {p['n']} | {p['only_a']} | {p['only_b']} | {100 * p['difference']:+.2f} pts "
                  f"({100 * p['ci95'][0]:+.2f} to {100 * p['ci95'][1]:+.2f}) | "
                  f"{'< 0.001' if p['p'] < 0.001 else format(p['p'], '.3f')} |" for key, p in pairs.items()]
    return "\n".join(lines) + "\n"


def run(recipes: list[list[str]], data_root: Path, size: int | None, out: Path | None, views: int = 1,
        autocontrast: float | None = None) -> dict:
    """recipes: [[NAME, CHECKPOINT, ...], ...] as `--recipe` gives them."""
    pooled, folds, classes = {}, {}, None
    for name, *paths in recipes:
        if not paths:
            raise ValueError(f"recipe {name} names no checkpoint")
        classes = classes or load_checkpoint(Path(paths[0]))[1]["classes"]
        pooled[name], present, k = out_of_fold([Path(p) for p in paths], data_root, size, classes, views,
                                               autocontrast)
        folds[name] = {"folds": present, "k": k}
    scores = {name: {**recipe_scores(p, classes), **folds[name]} for name, p in pooled.items()}
    names = list(pooled)
    pairs = {f"{a} vs {b}": paired(pooled[a], pooled[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    table = markdown(scores, pairs, classes)
    log.info("\n%s", table)
    result = {"size": size, "views": views, "autocontrast": autocontrast, "floor": RECALL_FLOOR, "classes": classes,
              "recipes": {n: [str(p) for p in r[1:]] for n, r in zip(names, recipes)},
              "scores": scores, "paired": pairs, "predictions": stored(pooled)}
    if out:
        write(result, table, out)
    return result


def against_fp32(pooled: dict, classes: list[str]) -> tuple[dict, dict, str]:
    """Each graph's scores, each paired against the fp32 graph where there is one, and their table."""
    scores = {name: recipe_scores(p, classes) for name, p in pooled.items()}
    pairs = {f"{name} vs fp32": paired(p, pooled["fp32"]) for name, p in pooled.items()
             if name != "fp32" and "fp32" in pooled}
    return scores, pairs, markdown(scores, pairs, classes)


def stored(pooled: dict) -> dict:
    """Every out-of-fold probability, so later questions need no rerun of the fits."""
    return {n: {path: {"target": t, "probabilities": [round(float(x), 5) for x in prob]}
                for path, (prob, t) in p.items()} for n, p in pooled.items()}


def write(result: dict, table: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "cv.md").write_text(table)
