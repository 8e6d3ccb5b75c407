"""`python -m export.robustness BUNDLE --data DIR`: the robustness suite on a bundle as served.

The suite's pictures (training.robustness) go through the server's own preprocessing,
onnxruntime and the bundle's calibration and threshold, so the figures are the kiosk's.
Choose on `--split val`; `--split test` reports a choice already made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from server.bundle import Bundle, for_this_cpu, load_bundle
from server.preprocess import preprocess
from server.runtime import Runtime
from training import robustness

from .__main__ import cpu_session

log = logging.getLogger("export.robustness")


def bundle_predictor(bundle: Bundle, threads: int = 2, raw: bool = False, fused: bool = True) -> robustness.Predict:
    """Pictures to the bundle's calibrated probabilities, as the server computes them;
    `raw`: the graph's own output instead (a teacher's, export.teacher); `fused` False: as
    `cpu_session` takes it."""
    runtime = Runtime(bundle, threads)
    if not fused:
        runtime.session = cpu_session(bundle.onnx_path, fused=False)

    def predict(images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([preprocess(image.convert("RGB"), bundle.preprocess) for image in images])
        outputs = runtime.infer(batch)
        return outputs if raw else runtime.probabilities(outputs)

    return predict


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="NAME.json")
    p.add_argument("--data", type=Path, required=True, help="dataset folder of the bundle's split manifest")
    p.add_argument("--manifest", type=Path, default=Path("training/splits/trashnet.json"))
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--limit", type=int, default=0, help="about this many pictures, evenly spaced (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for robustness.md and robustness.json")
    p.add_argument("--unfused", action="store_true", help="the bundle's own graph even where this CPU lacks what "
                   "it needs, run unfused: an 8-bit int8 graph as a CPU with VNNI computes it")
    return p


def main(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    if not args.unfused:
        bundle = for_this_cpu(bundle)  # the graph the server would serve on this CPU
    images, targets = robustness.held_out(args.manifest, args.data, args.split, args.limit)
    result = robustness.run_suite(bundle_predictor(bundle, fused=not args.unfused), images, targets,
                                  bundle.preprocess.resize, bundle.calibration.uncertain_below, args.seed)
    result.update(split=args.split, bundle=bundle.name, sha256=bundle.sha256, unfused=args.unfused)
    robustness.write(result, args.out, f"bundle {bundle.name} (sha256 {bundle.sha256[:12]}) on {args.split}")
    log.info("%s", json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(get_args_parser().parse_args()))
