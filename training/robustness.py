"""The robustness suite: held-out pictures as a kiosk camera would see them.

Three parts, each scored by a `predict(images) -> calibrated probabilities` callable, so
the same suite judges a checkpoint here (PyTorch) and a bundle as served (`python -m
export.robustness`, onnxruntime and the server's preprocessing):

- corruptions, ImageNet-C style (Hendrycks & Dietterich, 2019; their severity
  parameters, own code): defocus and motion blur, Gaussian noise, JPEG, brightness,
  contrast, and low light (dim plus shot noise), 5 severities each, applied at the
  model's input scale;
- background swaps: the studio backdrop (presets.RandomBackground's border-connected
  mask) replaced by a held-out surface (backgrounds.SUITE), one per surface and picture;
- frames with no object (backgrounds.NO_OBJECT): should come back "not sure".
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage, signal

from . import backgrounds, stats
from .presets import RandomBackground

log = logging.getLogger(__name__)
Predict = Callable[[list[Image.Image]], np.ndarray]

SEVERITIES = 5
CORRUPTIONS = ("defocus_blur", "motion_blur", "gaussian_noise", "jpeg", "brightness", "contrast", "low_light")
NO_OBJECT_PER_KIND = 20


def _disk(radius: float, alias_sigma: float) -> np.ndarray:
    size = int(np.ceil(radius))
    y, x = np.mgrid[-size:size + 1, -size:size + 1]
    kernel = ((x * x + y * y) <= radius * radius).astype(np.float32)
    return ndimage.gaussian_filter(kernel / kernel.sum(), alias_sigma)


def _line(length: int, angle: float, sigma: float) -> np.ndarray:
    kernel = np.zeros((2 * length + 1, 2 * length + 1), np.float32)
    t = np.arange(0, length + 1)
    weights = np.exp(-(t ** 2) / (2 * sigma ** 2))
    ys = np.round(length + t * np.sin(angle)).astype(int)
    xs = np.round(length + t * np.cos(angle)).astype(int)
    np.add.at(kernel, (ys, xs), weights)
    return kernel / kernel.sum()


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    pad = kernel.shape[0] // 2
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return signal.fftconvolve(padded, kernel[..., None], mode="valid", axes=(0, 1))


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 HxWx3 in, uint8 HxWx3 out; severity 1 (mild) to 5."""
    s = severity - 1
    x = image.astype(np.float32) / 255
    if name == "defocus_blur":
        radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][s]
        x = _convolve(x, _disk(radius, alias))
    elif name == "motion_blur":
        length, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][s]
        x = _convolve(x, _line(length, rng.uniform(-np.pi, np.pi), sigma))
    elif name == "gaussian_noise":
        x = x + rng.normal(0, [0.08, 0.12, 0.18, 0.26, 0.38][s], x.shape)
    elif name == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=[25, 18, 15, 10, 7][s])
        return np.asarray(Image.open(buffer).convert("RGB"))
    elif name == "brightness":
        hsv = np.asarray(Image.fromarray(image).convert("HSV"), np.float32) / 255
        hsv[..., 2] = np.clip(hsv[..., 2] + [0.1, 0.2, 0.3, 0.4, 0.5][s], 0, 1)
        return np.asarray(Image.fromarray((hsv * 255).astype(np.uint8), "HSV").convert("RGB"))
    elif name == "contrast":
        mean = x.mean((0, 1), keepdims=True)
        x = (x - mean) * [0.4, 0.3, 0.2, 0.1, 0.05][s] + mean
    elif name == "low_light":
        gain, photons = [(0.5, 200), (0.35, 100), (0.25, 60), (0.15, 30), (0.1, 15)][s]
        x = rng.poisson(np.clip(x * gain, 0, 1) * photons) / photons
    else:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def at_scale(image: Image.Image, short_side: int) -> Image.Image:
    """Corruptions are defined at ImageNet scale: apply them at the model's resize."""
    w, h = image.size
    scale = short_side / min(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)


def swap_background(image: Image.Image, surface: str, rng: np.random.Generator) -> tuple[Image.Image, float]:
    """The picture with its studio backdrop replaced; also the share of the frame replaced."""
    x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
    mask = torch.from_numpy(RandomBackground().backdrop_mask(x)).float()[None, None]
    mask = torch.nn.functional.avg_pool2d(mask, 5, 1, 2)[0, 0].numpy()[..., None]
    back = backgrounds.SUITE[surface](image.height, image.width, rng)
    out = np.asarray(image, np.float32) / 255 * (1 - mask) + back * mask
    return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)), float(mask.mean())


def no_object_frames(kind: str, n: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng([seed, sum(map(ord, kind))])
    w, h = size
    return [Image.fromarray((backgrounds.NO_OBJECT[kind](h, w, rng) * 255 + 0.5).astype(np.uint8))
            for _ in range(n)]


def score(right: np.ndarray) -> dict:
    """Accuracy of right-or-wrong answers, with its Wilson interval."""
    hits, n = int(right.sum()), int(right.size)
    return {"accuracy": hits / max(n, 1), "n": n, "ci95": list(stats.wilson(hits, n))}


def _batched(predict: Predict, images: list[Image.Image], batch: int = 32) -> np.ndarray:
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def run_suite(predict: Predict, images: list[Image.Image], targets: np.ndarray, resize: int,
              uncertain_below: float, seed: int = 0, corruptions=CORRUPTIONS,
              no_object_per_kind: int = NO_OBJECT_PER_KIND) -> dict:
    """Every part of the suite over `images` (held-out pictures) with their `targets`."""
    rng = np.random.default_rng(seed)
    # Right or wrong for every picture and copy, so two runs can be paired picture by picture.
    right = {"clean": [_batched(predict, images).argmax(1) == targets], "corruptions": [], "backgrounds": []}
    result = {"clean": score(right["clean"][0]), "uncertain_below": uncertain_below, "corruptions": {},
              "backgrounds": {}, "no_object": {}}
    scaled = [np.asarray(at_scale(im, resize)) for im in images]
    for name in corruptions:
        per = []
        for severity in range(1, SEVERITIES + 1):
            batch = [Image.fromarray(corrupt(x, name, severity, rng)) for x in scaled]
            right["corruptions"].append(_batched(predict, batch).argmax(1) == targets)
            per.append(score(right["corruptions"][-1]))
        result["corruptions"][name] = {"severities": per, "accuracy": float(np.mean([p["accuracy"] for p in per]))}
        log.info("corruption %-15s mean accuracy %.4f", name, result["corruptions"][name]["accuracy"])
    for surface in backgrounds.SUITE:
        swapped = [swap_background(im, surface, rng) for im in images]
        right["backgrounds"].append(_batched(predict, [im for im, _ in swapped]).argmax(1) == targets)
        entry = score(right["backgrounds"][-1])
        entry["mean_share_swapped"] = float(np.mean([share for _, share in swapped]))
        result["backgrounds"][surface] = entry
        log.info("background %-10s accuracy %.4f", surface, entry["accuracy"])
    size = (resize * 4 // 3, resize)  # a 4:3 camera frame at the model's scale
    for kind in backgrounds.NO_OBJECT:
        conf = _batched(predict, no_object_frames(kind, no_object_per_kind, size, seed)).max(1)
        hits = int((conf < uncertain_below).sum())
        low, high = stats.wilson(hits, len(conf))
        result["no_object"][kind] = {"uncertain": hits / len(conf), "n": len(conf), "ci95": [low, high]}
    result["summary"] = summary(result)
    result["per_picture"] = {part: np.stack(h, 1).astype(int).tolist() for part, h in right.items() if h}
    return result


def summary(result: dict) -> dict:
    def pooled(entries):
        hits = sum(round(e["accuracy"] * e["n"]) for e in entries)
        n = sum(e["n"] for e in entries)
        return {"accuracy": hits / n, "n": n, "ci95": list(stats.wilson(hits, n))}

    corruption = pooled([p for c in result["corruptions"].values() for p in c["severities"]])
    background = pooled(list(result["backgrounds"].values()))
    hits = sum(round(e["uncertain"] * e["n"]) for e in result["no_object"].values())
    n = sum(e["n"] for e in result["no_object"].values())
    clean = result["clean"]["accuracy"]
    return {"clean": result["clean"], "corruption_mean": corruption, "background_swap": background,
            "no_object_uncertain": {"share": hits / n, "n": n, "ci95": list(stats.wilson(hits, n))},
            "corruption_gap_points": 100 * (clean - corruption["accuracy"]),
            "background_gap_points": 100 * (clean - background["accuracy"])}


def pool(results: list[dict]) -> dict:
    """Suites of several networks, each on its own held-out pictures (one per fold), as one."""
    per = {part: np.concatenate([np.array(r["per_picture"][part]) for r in results])
           for part in results[0]["per_picture"]}
    first = results[0]
    pooled = {"clean": score(per["clean"]), "uncertain_below": [r["uncertain_below"] for r in results],
              "corruptions": {}, "backgrounds": {}, "no_object": {}, "split": first.get("split")}
    for i, name in enumerate(first["corruptions"]):
        block = per["corruptions"][:, i * SEVERITIES:(i + 1) * SEVERITIES]
        severities = [score(block[:, j]) for j in range(SEVERITIES)]
        pooled["corruptions"][name] = {"severities": severities,
                                       "accuracy": float(np.mean([e["accuracy"] for e in severities]))}
    for j, surface in enumerate(first["backgrounds"]):
        pooled["backgrounds"][surface] = {
            **score(per["backgrounds"][:, j]),
            "mean_share_swapped": float(np.mean([r["backgrounds"][surface]["mean_share_swapped"] for r in results]))}
    for kind in first["no_object"]:
        hits = sum(round(r["no_object"][kind]["uncertain"] * r["no_object"][kind]["n"]) for r in results)
        n = sum(r["no_object"][kind]["n"] for r in results)
        pooled["no_object"][kind] = {"uncertain": hits / n, "n": n, "ci95": list(stats.wilson(hits, n))}
    pooled["summary"] = summary(pooled)
    pooled["per_picture"] = {part: a.tolist() for part, a in per.items()}
    return pooled


def _thresholds(value) -> str:
    return ", ".join(f"{v:.3f}" for v in value) if isinstance(value, list) else f"{value:.3f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{_pct(low)}-{_pct(high)}"


def write(result: dict, out: Path, title: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(result, indent=1) + "\n")
    s = result["summary"]
    lines = [f"# Robustness suite: {title}", "", f"Split: {result.get('split', '?')}, {s['clean']['n']} pictures; "
             f"'not sure' below {_thresholds(result['uncertain_below'])} confidence.", "",
             "| part | score | 95% interval | n |", "| --- | --- | --- | --- |",
             f"| clean accuracy | {_pct(s['clean']['accuracy'])} | {_ci(s['clean'])} | {s['clean']['n']} |",
             f"| corruptions, mean accuracy | {_pct(s['corruption_mean']['accuracy'])} | {_ci(s['corruption_mean'])} "
             f"| {s['corruption_mean']['n']} |",
             f"| background swaps, accuracy | {_pct(s['background_swap']['accuracy'])} | {_ci(s['background_swap'])} "
             f"| {s['background_swap']['n']} |",
             f"| no-object frames answered 'not sure' | {_pct(s['no_object_uncertain']['share'])} | "
             f"{_ci(s['no_object_uncertain'])} | {s['no_object_uncertain']['n']} |", "",
             "## Corruptions (accuracy by severity 1-5)", "", "| corruption | 1 | 2 | 3 | 4 | 5 | mean |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in result["corruptions"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(p["accuracy"]) for p in c["severities"])
                     + f" | {_pct(c['accuracy'])} |")
    lines += ["", "## Background swaps", "", "| surface | accuracy | 95% interval | frame share swapped |",
              "| --- | --- | --- | --- |"]
    for name, b in result["backgrounds"].items():
        lines.append(f"| {name} | {_pct(b['accuracy'])} | {_ci(b)} | {_pct(b['mean_share_swapped'])} |")
    lines += ["", "## Frames with no object ('not sure' share)", "", "| frame | not sure | 95% interval | n |",
              "| --- | --- | --- | --- |"]
    for name, e in result["no_object"].items():
        lines.append(f"| {name} | {_pct(e['uncertain'])} | {_ci(e)} | {e['n']} |")
    (out / "robustness.md").write_text("\n".join(lines) + "\n")


def checkpoint_predictor(checkpoint: Path, size: int | None = None, temperature: float | None = None,
                         uncertain_below: float | None = None) -> tuple[Predict, dict, float]:
    """A checkpoint's calibrated predict (`temperature`, else its own if it has one), its spec
    (at `size` if given, the resize/crop ratio kept), its threshold (`uncertain_below`, else its own)."""
    from .checkpoint import load_checkpoint
    from .constants import UNCERTAIN_BELOW
    from .models import spec_at_size
    from .presets import eval_preset

    model, ckpt = load_checkpoint(checkpoint)
    if size:
        ckpt = {**ckpt, "preprocess": spec_at_size(ckpt["preprocess"], size)}
    tf = eval_preset(**ckpt["preprocess"])
    temperature = temperature or ckpt.get("temperature", 1.0)

    @torch.no_grad()
    def predict(images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([tf(im.convert("RGB")) for im in images])
        return (model(batch) / temperature).softmax(1).numpy()

    return predict, ckpt, uncertain_below or ckpt.get("uncertain_below", UNCERTAIN_BELOW)


def held_out(manifest: Path, data_root: Path, split: str, limit: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """A split's pictures and targets; with `limit`, about that many, evenly spaced."""
    from . import data

    samples = data.split_of(data.read_manifest(manifest), split)
    samples = samples[:: max(1, len(samples) // limit)] if limit else samples
    return [data.open_rgb(Path(data_root) / rel) for rel, _ in samples], np.array([t for _, t in samples])


def main(checkpoints: list[Path], data_root: Path, split: str, out: Path, limit: int = 0, seed: int = 0,
         size: int | None = None, temperature: float | None = None, uncertain_below: float | None = None) -> dict:
    """Several checkpoints: one per fold, each on its own fold's held-out pictures, pooled."""
    results = []
    for checkpoint in checkpoints:
        predict, ckpt, threshold = checkpoint_predictor(checkpoint, size, temperature, uncertain_below)
        images, targets = held_out(ckpt["manifest"], data_root, split, limit)
        results.append(run_suite(predict, images, targets, ckpt["preprocess"]["resize"], threshold, seed))
        results[-1]["split"] = split
    result = results[0] if len(results) == 1 else pool(results)
    names = ", ".join(str(c) for c in checkpoints)
    write(result, out, f"{names} on {split}" + (" of each, pooled" if len(results) > 1 else ""))
    log.info("robustness: %s", json.dumps({k: v for k, v in result["summary"].items() if "gap" in k}))
    return result
