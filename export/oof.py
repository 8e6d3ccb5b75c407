"""`python -m export.oof FOLD_CKPT... --image-size S --data DIR --out DIR`: fold networks as served.

Each fold network (`python -m training fit --manifest training/splits/cv3/fold-I.json`)
is exported to fp32 and to int8 (7-bit and 8-bit weights, calibrated on its own training
pictures as export does), and every graph is run over its fold's held-out pictures
through the server's decode and preprocessing. The pooled predictions are written as
`cv.json`, one recipe per graph, so `python -m training pair` and the out-of-fold
threshold read them as they read `python -m training cv`'s.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from training.cv import against_fp32, stored, write
from training.data import read_manifest, split_of

from .__main__ import calibration_arrays, cpu_session, load_arrays, load_members, onnx_logits
from .onnx_export import static_same_padding, to_onnx
from .quantize import quantize_int8

log = logging.getLogger("export.oof")


def graphs(checkpoint: Path, image_size: int | None, data_root: Path, work: Path, weight_bits: list[int],
           bias_correction: bool = False) -> tuple[dict, list, tuple[np.ndarray, np.ndarray], list[str]]:
    """{graph name: path} for one fold network, its fold's held-out pictures (as listed and as
    arrays) and its classes."""
    model, (ckpt,), spec = load_members([checkpoint], image_size)
    manifest = read_manifest(Path(ckpt["manifest"]))
    if manifest.get("cv") is None:
        raise ValueError(f"{checkpoint} was not trained on a fold manifest (`python -m training folds`)")
    exported = copy.deepcopy(model)
    if ckpt["backbone"] != "resnet50":
        static_same_padding(exported, spec.crop)
    paths = {"fp32": work / "fp32.onnx"}
    to_onnx(exported, paths["fp32"], spec.crop)
    calibration = calibration_arrays(data_root, split_of(manifest, "train"), spec)
    for bits in weight_bits:
        paths[f"int8-{bits}bit"] = work / f"int8-{bits}.onnx"
        quantize_int8(paths["fp32"], paths[f"int8-{bits}bit"], calibration, weight_bits=bits)
        if bias_correction:
            paths[f"int8-{bits}bit-bc"] = work / f"int8-{bits}-bc.onnx"
            quantize_int8(paths["fp32"], paths[f"int8-{bits}bit-bc"], calibration, weight_bits=bits,
                          bias_correction=True)
    held_out = split_of(manifest, "val")
    return paths, held_out, load_arrays(data_root, held_out, spec), ckpt["classes"]


def main(args: argparse.Namespace) -> int:
    pooled: dict[str, dict] = {}
    classes = None
    work = args.out / ".work"
    try:
        for checkpoint in args.checkpoints:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            paths, held_out, (images, targets), own = graphs(checkpoint, args.image_size, args.data, work,
                                                             args.int8_weights, args.bias_correction)
            if classes not in (None, own):
                raise ValueError(f"{checkpoint} has classes {own}, the others {classes}")
            classes = own
            runs = [(name, path, True) for name, path in paths.items()]
            if args.unfused:
                runs += [(f"{name}-unfused", path, False) for name, path in paths.items() if name != "fp32"]
            for name, path, fused in runs:
                probs = torch.from_numpy(onnx_logits(cpu_session(path, fused), images)).softmax(1)
                pooled.setdefault(name, {}).update(
                    {rel: (probs[i], int(targets[i])) for i, (rel, _) in enumerate(held_out)})
                log.info("%s %s: %d of %d right", checkpoint, name,
                         int((probs.argmax(1).numpy() == targets).sum()), len(targets))
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scores, pairs, table = against_fp32(pooled, classes)
    log.info("\n%s", table)
    result = {"size": args.image_size, "classes": classes, "checkpoints": [str(c) for c in args.checkpoints],
              "scores": scores, "paired": pairs, "predictions": stored(pooled)}
    write(result, table, args.out)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.oof", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", type=Path, nargs="+", metavar="checkpoint", help="one network per fold")
    p.add_argument("--image-size", type=int, help="serve at this input size instead of the training size")
    p.add_argument("--data", type=Path, required=True, help="dataset folder of the fold manifests")
    p.add_argument("--int8-weights", type=lambda s: [int(b) for b in s.split(",")], default=[7, 8],
                   help="weight bits of the int8 graphs to build, comma-separated (default 7,8)")
    p.add_argument("--bias-correction", action="store_true", help="also build each int8 graph with its "
                   "convolutions' biases corrected for their rounded weights (`<name>-bc`, export.biascorrect)")
    p.add_argument("--unfused", action="store_true", help="also run each int8 graph with graph optimisations "
                   "off (`<name>-unfused`): the QDQ arithmetic as written, as a CPU with VNNI computes it, "
                   "without this CPU's 16-bit shortcut")
    p.add_argument("--out", type=Path, required=True, help="folder for cv.json and cv.md")
    return p


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parsed = get_args_parser().parse_args()
    parsed.out.mkdir(parents=True, exist_ok=True)
    sys.exit(main(parsed))
