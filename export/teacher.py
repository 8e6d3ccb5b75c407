"""`python -m export.teacher BUNDLE --data DIR --manifest M --out FILE.npz`: a teacher's outputs, once.

Knowledge distillation needs the teacher's view of every training picture. A bundle
(an ensemble with its flipped views included) is run once, as served: the server's own
preprocessing and onnxruntime. The graph's raw outputs are kept, not the kiosk's
calibrated answer: a class offset is a decision rule, not knowledge. `python -m
training fit --teacher FILE.npz` reads the file; pictures it lacks train on their label only.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from server.bundle import Bundle, load_bundle
from training.data import ImageList, read_manifest, split_of

from .robustness import bundle_predictor

log = logging.getLogger("export.teacher")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.teacher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="the teacher's NAME.json")
    p.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per class")
    p.add_argument("--manifest", type=Path, default=Path("training/splits/trashnet.json"))
    p.add_argument("--split", nargs="+", default=["train"], help="splits to run the teacher on")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    return p


def teacher_outputs(bundle: Bundle, images: ImageList, threads: int = 2, batch: int = 8) -> np.ndarray:
    """The bundle's raw graph output (logits or log-probabilities) for each picture of `images`."""
    predict = bundle_predictor(bundle, threads, raw=True)
    return np.concatenate([predict([images[i][0] for i in range(start, min(start + batch, len(images)))])
                           for start in range(0, len(images), batch)]).astype(np.float32)


def main(args) -> int:
    manifest = read_manifest(args.manifest)
    bundle = load_bundle(args.bundle)
    if list(bundle.classes) != list(manifest["classes"]):
        log.error("the teacher's classes %s are not the manifest's %s", bundle.classes, manifest["classes"])
        return 2
    samples = [s for split in args.split for s in split_of(manifest, split)]
    started = time.time()
    outputs = teacher_outputs(bundle, ImageList(args.data, samples), args.threads, args.batch)
    targets = np.array([t for _, t in samples])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, paths=np.array([p for p, _ in samples]), outputs=outputs, classes=np.array(bundle.classes),
             bundle_sha256=np.array(bundle.sha256))
    log.info("%d pictures in %.0fs; the teacher's top-1 on them %.4f; written to %s", len(samples),
             time.time() - started, float((outputs.argmax(1) == targets).mean()), args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(get_args_parser().parse_args()))
