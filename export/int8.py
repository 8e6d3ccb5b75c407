"""`python -m export.int8 BUNDLE --data DIR --out models/NAME`: an fp32 bundle's graph to int8.

For a network whose checkpoint is not at hand: the fp32 graph is the network. It is
calibrated on the training split of the bundle's manifest through the bundle's own
preprocessing and measured on val and test, as `python -m export` does. Writes NAME.json
(int8) and NAME-fp32.json (the fp32 graph, its pads folded as export writes graphs now,
under the name the int8 bundle falls back to);
BUNDLE may be NAME.json itself. Calibration is the fp32 bundle's unless given.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from server.bundle import Bundle, BundleError, Calibration, load_bundle, read_model, sha256_file, write_bundle
from training.constants import ANSWERED_ACCURACY
from training.data import read_manifest, split_of

from .__main__ import (
    CALIBRATION_IMAGES,
    ROOT,
    calibration_arrays,
    cpu_session,
    evaluate_variant,
    fp32_name,
    git_commit,
    latency_ms,
    load_arrays,
)
from .graph import with_pads_folded
from .quantize import has_vnni, quantize_int8, requires

log = logging.getLogger("export.int8")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="an fp32 NAME.json")
    p.add_argument("--data", type=Path, required=True, help="dataset folder of the bundle's split manifest")
    p.add_argument("--manifest", type=Path, help="split manifest (default: the bundle's)")
    p.add_argument("--out", type=Path, required=True, help="bundle path without suffix, e.g. models/ecosort")
    p.add_argument("--int8-weights", type=int, choices=(7, 8), help="weight bits (default: 7 where the CPU has "
                   "no VNNI, else 8)")
    p.add_argument("--int8-bias-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="correct each convolution's bias for the mean shift of its rounded weights "
                   "(export.biascorrect; the default since round 10 of docs/selection-rule.md)")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                   help="training images to calibrate int8")
    p.add_argument("--uncertain-below", type=float, help="'not sure' threshold (default: the fp32 bundle's)")
    p.add_argument("--temperature", type=float, help="temperature (default: the fp32 bundle's)")
    p.add_argument("--limit", type=int, default=0, help="evaluate on at most N images per split (tests)")
    return p


def renamed(bundle: Bundle, name: str, folder: Path) -> Bundle:
    return dataclasses.replace(bundle, name=name, onnx=f"{name}.onnx", folder=folder)


def main(args: argparse.Namespace) -> int:
    try:
        fp32 = load_bundle(args.bundle)
        if fp32.requires is not None or fp32.metrics.get("precision", "fp32") != "fp32":
            raise BundleError(f"{args.bundle} is not an fp32 bundle")
        manifest = read_manifest(args.manifest or ROOT / fp32.provenance["split_manifest"])
        data = read_model(fp32)
    except (BundleError, KeyError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    limit = args.limit or None
    val, test = (load_arrays(args.data, split_of(manifest, s)[:limit], fp32.preprocess) for s in ("val", "test"))
    calibration = calibration_arrays(args.data, split_of(manifest, "train"), fp32.preprocess, args.calibration_images)
    temperature = args.temperature or fp32.calibration.temperature
    threshold = fp32.calibration.uncertain_below if args.uncertain_below is None else args.uncertain_below
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "fp32.onnx").write_bytes(data)
        with_pads_folded(work / "fp32.onnx", work / "fp32.onnx")  # the same logits, run faster
        info = quantize_int8(work / "fp32.onnx", work / "int8.onnx", calibration, weight_bits=args.int8_weights,
                             bias_correction=args.int8_bias_correction)
        evaluation = (val, test, list(fp32.classes), None, None, None, ANSWERED_ACCURACY, threshold,
                      temperature)
        # An 8-bit graph is served only where the CPU sums without saturating; elsewhere its
        # accuracy is measured as such a CPU computes it, not as this one's kernel would.
        fused = info["weight_bits"] == 7 or has_vnni()
        if not fused:
            log.info("no VNNI here: the int8 graph is measured unfused, as a CPU with VNNI computes it")
        results, sessions = {}, {}
        for precision in ("fp32", "int8"):
            results[precision], sessions[precision] = evaluate_variant(
                work / f"{precision}.onnx", *evaluation, fused=fused or precision == "fp32")
        if not fused:
            sessions["int8"] = cpu_session(work / "int8.onnx")  # this CPU's speed, whatever it computes
        speed = latency_ms(sessions, val[0][:1])
        loss = 100 * (results["fp32"]["val"]["accuracy"] - results["int8"]["val"]["accuracy"])
        log.info("int8 (%d-bit weights, %d convolutions bias-corrected): %+.2f val points against fp32, %.2fx as "
                 "fast at batch 1", info["weight_bits"], info["bias_corrected_convs"], -loss,
                 speed["fp32"] / speed["int8"])
        folder, name = args.out.parent, args.out.name
        folder.mkdir(parents=True, exist_ok=True)
        fallback = fp32_name(name, "int8")
        decision = (f"int8 ({info['weight_bits']}-bit weights) is {name}; {fallback} serves where the CPU "
                    "lacks what it needs" if info["weight_bits"] == 8 else f"int8 is {name}")
        other = dataclasses.replace(renamed(fp32, fallback, folder), sha256=sha256_file(work / "fp32.onnx"),
                                    metrics={**fp32.metrics, "shipped": "int8", "decision": decision,
                                             "fallback_for": name})
        shutil.copyfile(work / "fp32.onnx", other.onnx_path)
        write_bundle(other, folder / f"{other.name}.json")
        onnx_path = folder / f"{name}.onnx"
        shutil.move(work / "int8.onnx", onnx_path)
    int8 = dataclasses.replace(
        renamed(fp32, name, folder), sha256=sha256_file(onnx_path),
        calibration=Calibration(temperature, threshold, fp32.calibration.logit_offsets),
        metrics={"precision": "int8", **results["int8"], "quantization": info, "shipped": "int8",
                 "decision": decision, "measured_unfused": not fused,
                 "variants": {k: {"val_accuracy": v["val"]["accuracy"], "test_accuracy": v["test"]["accuracy"],
                                  "latency_ms_batch1": speed[k]} for k, v in results.items()}},
        provenance={**fp32.provenance, "commit": git_commit(),
                    "quantized_from": {"bundle": other.name, "sha256": other.sha256}},
        requires=requires(info, f"{other.name}.json"))
    write_bundle(int8, folder / f"{name}.json")
    log.info("wrote %s and %s", folder / f"{name}.json", folder / f"{other.name}.json")
    return 0


if __name__ == "__main__":
    # The quantiser logs every scale it adjusts on the root logger: keep that at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    sys.exit(main(get_args_parser().parse_args()))
