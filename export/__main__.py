"""`python -m export CHECKPOINT [CHECKPOINT ...] --out models/NAME`: checkpoints to a shipped bundle.

Writes NAME.onnx + NAME.json (the variant that is shipped) and NAME-fp32 or NAME-int8
(the other one, for the benchmark), after proving ONNX == PyTorch on validation images.
Several checkpoints (same classes, normalisation and split) become one ensemble graph.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from server.bundle import Bundle, Calibration, InputSpec, Preprocess, sha256_file, write_bundle
from server.preprocess import decode, preprocess
from server.runtime import session_options
from training.calibration import fit_logit_adjustment, fit_temperature, lowest_recall, prior_offsets
from training.checkpoint import load_checkpoint, same_split
from training.constants import ANSWERED_ACCURACY
from training.data import read_manifest, split_of
from training.models import VIEWS, Views, spec_at_size, strategy_label
from training.report import classification_metrics, write_report
from training.selective import choose_threshold, curve_points, risk_coverage
from training.train import class_counts

from .onnx_export import OPSET, Ensemble, output_name, parity, static_same_padding, to_onnx
from .quantize import BATCH, quantize_int8, requires

log = logging.getLogger("export")
ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_IMAGES = 256


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", type=Path, nargs="+", metavar="checkpoint",
                   help="best.pt written by `python -m training fit`; several make one ensemble (mean probability)")
    p.add_argument("--out", type=Path, required=True, help="bundle path without suffix, e.g. models/ecosort")
    p.add_argument("--image-size", type=int, help="serve at this input size instead of the training size "
                   "(random resized crops show objects larger in training than a centre crop does)")
    p.add_argument("--autocontrast", type=float, metavar="PERCENT", help="stretch each crop by its luma histogram, "
                   "the darkest and brightest PERCENT clipped, before normalising (default: as the checkpoint says)")
    p.add_argument("--data", type=Path, help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--manifest", type=Path, help="split manifest (default: the checkpoint's)")
    p.add_argument("--parity-images", type=int, default=64, help="validation images for the parity check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |logit difference| allowed")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                   help="training images to calibrate int8")
    p.add_argument("--max-int8-loss", type=float, default=0.5, help="accuracy points int8 may lose and ship")
    p.add_argument("--no-int8", action="store_true", help="fp32 only")
    p.add_argument("--int8-weights", type=int, choices=(7, 8), help="weight bits of the int8 graph (default: 7 "
                   "where the CPU has no VNNI, whose u8s8 kernel can saturate 16-bit sums, else 8)")
    p.add_argument("--int8-bias-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="correct each convolution's bias for the mean shift of its rounded weights "
                   "(export.biascorrect; the default since round 10 of docs/selection-rule.md)")
    p.add_argument("--uncertain-below", type=float, help="answer only at or above this calibrated confidence "
                   "(default: the lowest threshold whose answered val pictures are --answered-accuracy right)")
    p.add_argument("--temperature", type=float, help="calibrate with this temperature instead of fitting one on val "
                   "(the one `python -m training cv` fitted out of fold beside --uncertain-below: a threshold "
                   "means what it was chosen to mean only under the temperature it was chosen with)")
    p.add_argument("--answered-accuracy", type=float, default=ANSWERED_ACCURACY,
                   help="accuracy the answered val pictures must reach when the threshold is chosen")
    p.add_argument("--logit-adjustment", choices=("none", "fit"), default="none",
                   help="fit: add -tau*log(training class frequency) to the logits, tau chosen on val to lift "
                   "the lowest class recall at a cost of at most 2 val images (Menon et al., 2021)")
    p.add_argument("--logit-tau", type=float, help="the same adjustment with this tau instead of a fit on val "
                   "(e.g. the one `python -m training cv` fitted on out-of-fold predictions of the recipe)")
    p.add_argument("--class-offset", metavar="CLASS=B", help="add B to one class's logit, after any tau (a recall "
                   "floor's threshold fitted out of fold by `python -m training cv`)")
    p.add_argument("--views", type=int, choices=VIEWS, default=1, help="average each network over flipped copies "
                   "inside the graph: 1 none, 2 and the mirror, 4 and upside down too (each view costs a pass)")
    p.add_argument("--limit", type=int, default=0, help="evaluate on at most N images per split (tests)")
    p.add_argument("--report", type=Path, help="also write the shipped variant's report (summary, per-class "
                   "table, confusion matrix JSON + PNG) to this folder")
    return p


def load_arrays(root: Path, samples, spec: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Images through the server's own exact decode + preprocessing: accuracy as served."""
    arrays = [preprocess(decode((root / rel).read_bytes(), 10**9, 1), spec) for rel, _ in samples]
    return np.stack(arrays), np.array([t for _, t in samples])


def calibration_arrays(root: Path, train, spec: Preprocess, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """int8's calibration pictures: `n` of the training split, the same ones on every run."""
    pick = np.random.default_rng(0).permutation(len(train))[:n]
    return load_arrays(root, [train[i] for i in sorted(pick)], spec)[0]


def cpu_session(path: Path, fused: bool = True) -> ort.InferenceSession:
    """`fused` False: no graph optimisation, so a QDQ graph runs its QuantizeLinear and
    DequantizeLinear as written and its convolutions in fp32, no integer kernel's shortcut."""
    options = session_options(2, False, True)
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([session.run(None, {"image": images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def latency_ms(sessions: dict, image: np.ndarray, runs: int = 40) -> dict:
    """Median batch-1 latency, variants interleaved, with gaps so spinning threads settle."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for name, session in sessions.items():
            time.sleep(0.01)
            start = time.perf_counter()
            session.run(None, {"image": image})
            times[name].append((time.perf_counter() - start) * 1000)
    return {k: float(np.median(v[5:])) for k, v in times.items()}


def git_commit() -> dict | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "export"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return {"sha": sha.stdout.strip(), "uncommitted_changes": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return None


def answered_at(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict:
    conf, pred = probs.max(1)
    answered = conf >= threshold
    n = int(answered.sum())
    return {"coverage": n / len(targets), "accuracy": float((pred == targets)[answered].float().mean()) if n else None}


def selective(val_logits, val_targets, test_logits, test_targets, temperature: float, answered: float,
              threshold: float | None) -> dict:
    """The 'not sure' threshold (chosen on val unless given) and what it does on val and test."""
    val_probs, test_probs = ((z / temperature).softmax(1) for z in (val_logits, test_logits))
    conf, pred = val_probs.max(1)
    correct = (pred == val_targets).numpy()
    curve = risk_coverage(conf.numpy(), correct)
    chosen = choose_threshold(conf.numpy(), correct, answered) if threshold is None else None
    threshold = chosen["threshold"] if chosen else threshold
    return {"threshold": threshold, "chosen_on_val": chosen, "answered_accuracy_target": answered,
            "val": answered_at(val_probs, val_targets, threshold),
            "test": answered_at(test_probs, test_targets, threshold),
            "val_curve": curve_points(curve)}


def evaluate_variant(path: Path, val, test, classes, counts: list[int] | None, tau: float | None = None,
                     class_offset: tuple[int, float] | None = None, answered: float = ANSWERED_ACCURACY,
                     threshold: float | None = None,
                     temperature: float | None = None, fused: bool = True) -> tuple[dict, ort.InferenceSession]:
    """Calibration fitted on val (prior offsets if counts are given, with tau if given; one class's
    offset if given; then temperature, unless given), measured on val and test (`fused`: as
    `cpu_session` takes it)."""
    session = cpu_session(path, fused)
    val_logits, test_logits = (torch.from_numpy(onnx_logits(session, x)) for x, _ in (val, test))
    val_targets, test_targets = torch.from_numpy(val[1]), torch.from_numpy(test[1])
    adjustment = None
    if counts is not None or class_offset is not None:
        source = None if counts is None else "val" if tau is None else "given"
        if counts is not None and tau is None:
            tau = fit_logit_adjustment(val_logits, val_targets, counts)
        offsets = prior_offsets(counts, tau) if counts is not None else torch.zeros(len(classes))
        if class_offset is not None:
            offsets[class_offset[0]] += class_offset[1]
        adjustment = {"tau": tau or 0.0, "tau_from": source, "offsets": offsets.tolist(), "train_counts": counts,
                      "class_offset": None if class_offset is None else {classes[class_offset[0]]: class_offset[1]},
                      "unadjusted": {
            split: {"accuracy": float((z.argmax(1) == t).float().mean()), "lowest_recall": lowest_recall(z, t)}
            for split, z, t in (("val", val_logits, val_targets), ("test", test_logits, test_targets))}}
        val_logits, test_logits = val_logits + offsets, test_logits + offsets
    source = "given" if temperature else "val"
    temperature = temperature or fit_temperature(val_logits, val_targets)
    return {
        "temperature": temperature,
        "temperature_from": source,
        "logit_adjustment": adjustment,
        "selective": selective(val_logits, val_targets, test_logits, test_targets, temperature, answered, threshold),
        "val": classification_metrics(val_logits, val_targets, classes, temperature),
        "test": classification_metrics(test_logits, test_targets, classes, temperature),
    }, session


def load_members(paths: list[Path], image_size: int | None, views: int = 1,
                 autocontrast: float | None = None) -> tuple[torch.nn.Module, list[dict], Preprocess]:
    """One network, or an Ensemble of several that agree on everything the bundle states once;
    with views > 1 each network is averaged over its flipped copies first (training.models.Views)."""
    models, ckpts = zip(*(load_checkpoint(p) for p in paths))
    first = ckpts[0]
    try:
        same_split(paths, ckpts)
    except ValueError as exc:
        raise ValueError(f"{exc}: not one ensemble") from None
    raw = spec_at_size(first["preprocess"], image_size) if image_size else first["preprocess"]
    if autocontrast is not None:
        raw = {**raw, "autocontrast": autocontrast}
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if any(ckpt["preprocess"].get(k) != first["preprocess"].get(k)
               for k in ("mean", "std", "interpolation", "autocontrast")):
            raise ValueError(f"{path} normalises its input differently from {paths[0]}: not one ensemble")
        # Members trained at other sizes are served at one; each must keep its own resize/crop ratio.
        if spec_at_size(ckpt["preprocess"], raw["crop"])["resize"] != raw["resize"]:
            raise ValueError(f"{path} resizes to {ckpt['preprocess']['resize']} for a {ckpt['preprocess']['crop']} "
                             f"crop, {paths[0]} to {first['preprocess']['resize']} for {first['preprocess']['crop']}: "
                             "not one ensemble")
    spec = Preprocess(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
    if views > 1:
        models = tuple(Views(m, views).eval() for m in models)
    model = models[0] if len(models) == 1 else Ensemble(list(models)).eval()
    return model, list(ckpts), spec


def main(args) -> int:
    try:
        if args.autocontrast is not None and not 0 <= args.autocontrast < 50:
            raise ValueError(f"--autocontrast takes a percent in [0, 50); got {args.autocontrast}")
        model, ckpts, spec = load_members(args.checkpoints, args.image_size, args.views, args.autocontrast)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    ckpt, classes = ckpts[0], ckpts[0]["classes"]
    backbones = "+".join(c["backbone"] for c in ckpts)
    data_root = args.data or Path(ckpt["data"])
    manifest_path = args.manifest or Path(ckpt["manifest"])
    manifest = read_manifest(manifest_path)
    limit = args.limit or None
    counts = None
    if args.logit_tau is not None and (args.logit_adjustment == "fit" or not 0 <= args.logit_tau < 10):
        log.error("--logit-tau takes a tau in [0, 10) and replaces --logit-adjustment fit; got %s with %s",
                  args.logit_tau, args.logit_adjustment)
        return 2
    if args.temperature is not None and not 0 < args.temperature < 100:
        log.error("--temperature takes a positive temperature below 100; got %s", args.temperature)
        return 2
    try:
        class_offset = parse_class_offset(args.class_offset, classes)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.logit_adjustment == "fit" or args.logit_tau is not None:
        counts = class_counts(split_of(manifest, "train"), len(classes)).int().tolist()
    held_out = {s: split_of(manifest, s) for s in ("val", "test")}
    empty = [s for s, items in held_out.items() if not items]
    if empty:
        log.error("%s has no %s pictures to check the export on (a fold manifest has no test split: "
                  "pass --manifest training/splits/trashnet.json)", manifest_path, " or ".join(empty))
        return 2
    val = load_arrays(data_root, held_out["val"][:limit], spec)
    test = load_arrays(data_root, held_out["test"][:limit], spec)

    work = args.out.parent / f".{args.out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    exported = copy.deepcopy(model)
    swapped = static_same_padding(exported, spec.crop) if any(c["backbone"] != "resnet50" for c in ckpts) else 0
    proto = to_onnx(exported, work / "fp32.onnx", spec.crop)
    # For the record: the same network exported with timm's run-time padding.
    dynamic_nodes = len(to_onnx(model, work / "dynamic.onnx", spec.crop).graph.node) if swapped else None
    graph = {"nodes": len(proto.graph.node), "nodes_with_dynamic_padding": dynamic_nodes,
             "convs_made_static": swapped}
    log.info("exported %s at %dx%d: %d nodes (%s with timm's dynamic padding; %d convs made static), opset %d",
             backbones, spec.crop, spec.crop, len(proto.graph.node), dynamic_nodes,
             swapped, OPSET)

    results, sessions = {}, {}
    # the same for both precisions
    evaluation = (val, test, classes, counts, args.logit_tau, class_offset, args.answered_accuracy,
                  args.uncertain_below, args.temperature)
    results["fp32"], sessions["fp32"] = evaluate_variant(work / "fp32.onnx", *evaluation)
    check = parity(model, sessions["fp32"], val[0][: args.parity_images])
    log.info("parity on %d validation images: max |dlogit| %.2e, argmax equal %s",
             check["images"], check["max_abs_logit_diff"], check["argmax_equal"])
    if check["max_abs_logit_diff"] > args.tolerance or not check["argmax_equal"]:
        log.error("parity FAILED: max |dlogit| %.3e exceeds %.1e by %.3e%s", check["max_abs_logit_diff"],
                  args.tolerance, check["max_abs_logit_diff"] - args.tolerance,
                  "" if check["argmax_equal"] else "; argmax differs")
        return 1

    quant = None
    if not args.no_int8:
        calibration = calibration_arrays(data_root, split_of(manifest, "train"), spec, args.calibration_images)
        # Each view is another pass whose activations the calibrator holds: fewer images a run.
        quant = quantize_int8(work / "fp32.onnx", work / "int8.onnx", calibration,
                              batch=max(1, BATCH // args.views), weight_bits=args.int8_weights,
                              bias_correction=args.int8_bias_correction)
        results["int8"], sessions["int8"] = evaluate_variant(work / "int8.onnx", *evaluation)
    speed = latency_ms(sessions, val[0][:1])
    shipped, reason = choose(results, speed, args.max_int8_loss)
    log.info("test accuracy %s; batch-1 latency %s ms; shipping %s: %s",
             {k: round(v["test"]["accuracy"], 4) for k, v in results.items()},
             {k: round(v, 2) for k, v in speed.items()}, shipped, reason)

    summary = {k: {"test_accuracy": v["test"]["accuracy"], "latency_ms_batch1": speed[k]} for k, v in results.items()}
    for precision in results:
        name = args.out.name if precision == shipped else f"{args.out.name}-{precision}"
        onnx_path = args.out.parent / f"{name}.onnx"
        shutil.move(work / f"{precision}.onnx", onnx_path)
        bundle = Bundle(
            name=name, onnx=onnx_path.name, sha256=sha256_file(onnx_path), classes=tuple(classes),
            input=InputSpec("image", (None, 3, spec.crop, spec.crop)), preprocess=spec, output=output_name(model),
            calibration=Calibration(results[precision]["temperature"], results[precision]["selective"]["threshold"],
                                    offsets(results[precision])),
            metrics={"precision": precision, **results[precision], "parity": check, "variants": summary,
                     "graph": graph,
                     "shipped": shipped, "decision": reason, "quantization": quant if precision == "int8" else None},
            provenance={**provenance(ckpts, args.checkpoints, manifest_path), "views": args.views},
            requires=requires(quant, f"{fp32_name(args.out.name, shipped)}.json") if precision == "int8" else None,
        )
        write_bundle(bundle, args.out.parent / f"{name}.json")
        log.info("wrote %s", args.out.parent / f"{name}.json")
    if args.report:
        write_report(args.report, f"{args.out.name} ({shipped})", {
            "backbone": backbones + (f", averaged over {args.views} flipped views" if args.views > 1 else ""),
            "strategy": " + ".join(strategy_label(c) for c in ckpts),
            "best_epoch": "+".join(str(c["epoch"]) for c in ckpts), **results[shipped]}, classes)
        log.info("report in %s", args.report)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def fp32_name(name: str, shipped: str) -> str:
    return name if shipped == "fp32" else f"{name}-fp32"


def offsets(result: dict) -> tuple[float, ...] | None:
    adjustment = result["logit_adjustment"]
    used = adjustment and (adjustment["tau"] > 0 or adjustment["class_offset"])
    return tuple(adjustment["offsets"]) if used else None


def parse_class_offset(text: str | None, classes: list[str]) -> tuple[int, float] | None:
    """`trash=0.85` -> (index of trash, 0.85)."""
    if text is None:
        return None
    name, _, value = text.partition("=")
    try:
        offset = float(value)
    except ValueError:
        offset = float("nan")
    if name not in classes or not 0 <= offset < 10:
        raise ValueError(f"--class-offset takes CLASS=B with CLASS one of {classes} and B in [0, 10); got {text!r}")
    return classes.index(name), offset


def choose(results: dict, speed: dict, max_loss_points: float) -> tuple[str, str]:
    if "int8" not in results:
        return "fp32", "int8 not built"
    # On val, never test: the test split is reported, not chosen on.
    loss = 100 * (results["fp32"]["val"]["accuracy"] - results["int8"]["val"]["accuracy"])
    gain = speed["fp32"] / speed["int8"]
    if loss > max_loss_points:
        return "fp32", f"int8 loses {loss:.2f} val accuracy points (> {max_loss_points})"
    if gain < 1.1:
        return "fp32", f"int8 is only {gain:.2f}x as fast as fp32 at batch 1"
    return "int8", f"int8 loses {loss:.2f} val points (<= {max_loss_points}) and is {gain:.2f}x as fast"


PATH_ARGS = ("data", "manifest", "out", "weights", "init_from", "feedback", "device", "workers", "no_progress")


def member(ckpt: dict, checkpoint: Path) -> dict:
    # Training arguments that name this machine's folders say nothing to a kiosk's operator.
    args = {k: v for k, v in ckpt.get("args", {}).items() if k not in PATH_ARGS}
    return {"backbone": ckpt["backbone"], "strategy": strategy_label(ckpt), "epoch": ckpt["epoch"],
            "trained_size": ckpt["preprocess"]["crop"], "checkpoint_sha256": sha256_file(checkpoint),
            "wise_alpha": ckpt.get("wise_alpha"), "training_args": args}


def provenance(ckpts: list[dict], checkpoints: list[Path], manifest: Path) -> dict:
    try:
        manifest_rel = str(manifest.resolve().relative_to(ROOT))
    except ValueError:
        manifest_rel = manifest.name
    members = [member(c, p) for c, p in zip(ckpts, checkpoints)]
    # One network: its fields at the top. Several: "backbone" names them all, "members" has each.
    head = members[0] if len(members) == 1 else {
        "backbone": "+".join(m["backbone"] for m in members), "ensemble": "mean probability", "members": members}
    return {
        **head, "data": Path(ckpts[0]["data"]).name, "split_manifest": manifest_rel, "commit": git_commit(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "opset": OPSET},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    # The quantiser logs every scale it adjusts on the root logger: keep that at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    sys.exit(main(get_args_parser().parse_args()))
