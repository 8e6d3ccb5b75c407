"""Scan a folder-per-class image set, drop duplicates, split it, and read it back.

The split manifest is the single source of truth for which picture is in which split:
evaluation, calibration and export all reuse it, so a number is always on the same test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split

from . import constants

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The image folder cannot be used (empty, one class, ...)."""


@dataclass(frozen=True)
class Item:
    path: str  # relative to the dataset folder
    sha256: str
    label: str
    split: str = ""


def open_rgb(path: Path) -> Image.Image:
    """Decode as the server does for camera frames: EXIF orientation applied, RGB."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def dhash(image: Image.Image, size: int = 16) -> np.ndarray:
    """256-bit difference hash: robust to re-encoding and small crops, cheap to compare."""
    gray = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), np.int16)
    return (gray[:, 1:] > gray[:, :-1]).ravel()


def scan(root: Path) -> tuple[list[str], list[Item], list[np.ndarray]]:
    """List class folders and readable images; unreadable files are reported and skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items, hashes = [], []
    for label in classes:
        for path in sorted((root / label).iterdir()):
            if path.suffix.lower() not in constants.IMAGE_EXTENSIONS:
                continue
            try:
                data = path.read_bytes()
                image = open_rgb(path)
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
                log.warning("skipping unreadable image %s: %s", path.relative_to(root), exc)
                continue
            items.append(Item(str(path.relative_to(root)), hashlib.sha256(data).hexdigest(), label))
            hashes.append(dhash(image))
    present = sorted({it.label for it in items})
    if len(present) < 2:
        raise DatasetError(
            f"need at least two classes with readable images in {root}, found {len(present)}: {present}"
        )
    return present, items, hashes


def duplicate_groups(items: list[Item], hashes: list[np.ndarray], max_bits: int) -> list[int]:
    """Union-find over byte-identical (same sha256) and near-identical (dhash) pictures."""
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    first_by_sha: dict[str, int] = {}
    for i, it in enumerate(items):
        union(i, first_by_sha.setdefault(it.sha256, i))
    if hashes:
        bits = np.stack(hashes).astype(np.uint8)
        for i in range(len(bits) - 1):
            dist = (bits[i + 1 :] != bits[i]).sum(axis=1)
            for j in np.nonzero(dist <= max_bits)[0]:
                union(i, i + 1 + int(j))
    return [find(i) for i in range(len(items))]


def dedup(items: list[Item], groups: list[int]) -> tuple[list[Item], list[int], list[dict]]:
    """Drop cross-class duplicate groups whole (their label is unknowable); keep the rest grouped."""
    labels_by_group: dict[int, set[str]] = {}
    for it, g in zip(items, groups):
        labels_by_group.setdefault(g, set()).add(it.label)
    kept, kept_groups, dropped = [], [], []
    for it, g in zip(items, groups):
        if len(labels_by_group[g]) > 1:
            dropped.append({"path": it.path, "reason": "duplicate across classes"})
        else:
            kept.append(it)
            kept_groups.append(g)
    return kept, kept_groups, dropped


def split_items(
    items: list[Item], groups: list[int], fractions=constants.DEFAULT_FRACTIONS, seed=constants.DEFAULT_SEED
) -> list[Item]:
    """Stratified split over duplicate groups, so one picture never lands in two splits."""
    reps = sorted({g: it.label for it, g in zip(items, groups)}.items())
    keys = [g for g, _ in reps]
    labels = [lab for _, lab in reps]
    train_f, val_f, test_f = fractions
    rest_keys, test_keys, rest_labels, _ = train_test_split(
        keys, labels, test_size=test_f, stratify=labels, random_state=seed
    )
    train_keys, val_keys = train_test_split(
        rest_keys, test_size=val_f / (train_f + val_f), stratify=rest_labels, random_state=seed
    )
    where = {g: "train" for g in train_keys} | {g: "val" for g in val_keys} | {g: "test" for g in test_keys}
    return [Item(it.path, it.sha256, it.label, where[g]) for it, g in zip(items, groups)]


def make_manifest(root: Path, fractions=constants.DEFAULT_FRACTIONS, seed=constants.DEFAULT_SEED,
                  near_dup_bits: int = constants.NEAR_DUP_BITS) -> dict:
    classes, items, hashes = scan(root)
    groups = duplicate_groups(items, hashes, near_dup_bits)
    kept, kept_groups, dropped = dedup(items, groups)
    split = split_items(kept, kept_groups, fractions, seed)
    counts = Counter((it.split, it.label) for it in split)
    log.info("%d images, %d dropped as cross-class duplicates, %d near/exact duplicate groups",
             len(items), len(dropped), len(items) - len(set(groups)))
    return {
        "classes": classes,
        "seed": seed,
        "fractions": list(fractions),
        "near_dup_bits": near_dup_bits,
        "counts": {s: {c: counts[(s, c)] for c in classes} for s in constants.SPLITS},
        "dropped": dropped,
        "items": [it.__dict__ for it in split],
    }


def write_manifest(manifest: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def read_manifest(path: Path) -> dict:
    manifest = json.loads(Path(path).read_text())
    if "items" not in manifest or "classes" not in manifest:
        raise DatasetError(f"{path} is not a split manifest (needs 'classes' and 'items')")
    return manifest


FEEDBACK = "feedback:"  # path prefix of a station's pictures: relative to the feedback folder


def _split_by_hash(sha256: str, fractions=constants.DEFAULT_FRACTIONS) -> str:
    """A new picture's split from its bytes alone: the same picture lands in the same split
    on every station and every retrain, whatever else arrived."""
    u = int(sha256[:8], 16) / 16**8
    train_f, val_f, _ = fractions
    return "train" if u < train_f else "val" if u < train_f + val_f else "test"


def extend_with_feedback(manifest: dict, feedback: Path, data_root: Path | None = None) -> tuple[dict, int]:
    """The manifest plus every feedback picture not in it yet (FOLDER/LABEL/*.jpg, the
    server's layout). Entries already there never move; a new picture that is a
    near-duplicate of one already placed joins that one's split (it is the same object),
    otherwise its split comes from its hash. Returns the new manifest and how many were added."""
    feedback = Path(feedback)
    if not feedback.is_dir():
        raise DatasetError(f"feedback folder not found: {feedback}")
    classes = manifest["classes"]
    known = {it["sha256"] for it in manifest["items"]}
    new = []
    for label in classes:
        for path in sorted((feedback / label).glob("*")) if (feedback / label).is_dir() else []:
            if path.suffix.lower() not in constants.IMAGE_EXTENSIONS or path.name.startswith("."):
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in known:
                continue
            known.add(digest)
            new.append((path, Item(f"{FEEDBACK}{label}/{path.name}", digest, label)))
    unknown = sorted({p.parent.name for p in feedback.glob("*/*") if p.parent.name not in classes
                      and not p.parent.name.startswith(".")})
    if unknown:
        log.warning("feedback folders %s are not classes of this manifest: skipped", unknown)
    if not new:
        return manifest, 0
    reader = ImageList(data_root, [], feedback=feedback) if data_root is not None else None
    placed = [(dhash(open_rgb(reader.path(it["path"]))), it["split"]) for it in manifest["items"]] if reader else []
    items = list(manifest["items"])
    for path, item in new:
        h = dhash(open_rgb(path))
        near = next((split for other, split in placed
                     if int((other != h).sum()) <= manifest.get("near_dup_bits", constants.NEAR_DUP_BITS)), None)
        split = near or _split_by_hash(item.sha256, manifest.get("fractions", constants.DEFAULT_FRACTIONS))
        placed.append((h, split))
        items.append({**item.__dict__, "split": split})
    counts = Counter((it["split"], it["label"]) for it in items)
    log.info("feedback: %d new pictures added to the manifest", len(new))
    return {**manifest, "items": items,
            "counts": {sp: {c: counts[(sp, c)] for c in classes} for sp in constants.SPLITS}}, len(new)


def split_of(manifest: dict, split: str) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(manifest["classes"])}
    return [(it["path"], index[it["label"]]) for it in manifest["items"] if it["split"] == split]


class ImageList:
    """torch-style dataset over (relative path, class index) pairs; decodes lazily.
    Paths that start with FEEDBACK are read from the feedback folder."""

    def __init__(self, root: Path, samples: list[tuple[str, int]], transform=None, feedback: Path | None = None):
        self.root, self.samples, self.transform = Path(root), samples, transform
        self.feedback = Path(feedback) if feedback else None

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, rel: str) -> Path:
        if rel.startswith(FEEDBACK):
            if self.feedback is None:
                raise DatasetError(f"{rel} is a feedback picture: pass the feedback folder (--feedback)")
            return self.feedback / rel[len(FEEDBACK):]
        return self.root / rel

    def __getitem__(self, i: int):
        rel, target = self.samples[i]
        image = open_rgb(self.path(rel))
        return (self.transform(image) if self.transform else image), target


class SoftTargets:
    """A dataset whose targets become distributions: `alpha` of the teacher's softmax
    (`outputs[path]`, over `temperature`) and the rest the one-hot label (knowledge
    distillation, Hinton et al., 2015). Pictures the teacher has not seen keep their
    one-hot label; a frame with no object (target -1) gets all zeros, which
    OutlierExposureLoss reads as "no object"."""

    def __init__(self, dataset, outputs: dict[str, np.ndarray], n_classes: int, alpha: float,
                 temperature: float = 1.0):
        self.dataset, self.outputs, self.n, self.alpha, self.t = dataset, outputs, n_classes, alpha, temperature

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        import torch

        image, target = self.dataset[i]
        soft = torch.zeros(self.n)
        if target < 0:
            return image, soft
        soft[target] = 1.0
        teacher = self.outputs.get(self.dataset.samples[i][0])
        if teacher is not None:
            z = torch.as_tensor(teacher, dtype=torch.float32) / self.t
            soft = (1 - self.alpha) * soft + self.alpha * z.softmax(0)
        return image, soft


def read_teacher(path: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """`python -m export.teacher`'s file as {relative path: raw output}."""
    with np.load(path) as f:
        if list(f["classes"]) != list(classes):
            raise DatasetError(f"{path} is a teacher for {list(f['classes'])}, not {classes}")
        return dict(zip(f["paths"].tolist(), f["outputs"]))


class NoObjectFrames:
    """`n` frames with no object on them (backgrounds.training_no_object), target -1.

    Mixed into the training set for outlier exposure: the loss pushes their predicted
    distribution towards uniform, so an empty frame reads as "not sure".
    """

    def __init__(self, n: int, size: int, transform, seed: int = 0):
        self.n, self.size, self.transform, self.seed = n, size, transform, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        from . import backgrounds

        rng = np.random.default_rng([self.seed, i, int(torch.randint(2**31, ()))])
        frame = backgrounds.training_no_object(self.size, self.size, rng)
        return self.transform(Image.fromarray((frame * 255).astype(np.uint8))), -1
