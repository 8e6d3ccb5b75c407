"""`python -m training fit`: fine-tune, keep the best epoch (and the last), calibrate, report.

Structure after torchvision's references/classification/train.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler, WeightedRandomSampler

from . import constants, data, presets
from .calibration import fit_temperature
from .checkpoint import atomic_save, load_checkpoint, save_checkpoint
from .engine import evaluate, predict, train_one_epoch
from .losses import OutlierExposureLoss
from .mixing import BatchMix
from .models import BACKBONES, STRATEGIES, apply_strategy, build_model, preprocess_spec, strategy_label
from .probe import fit_probe
from .report import classification_metrics, write_report

log = logging.getLogger(__name__)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fine-tune an ImageNet backbone on a folder-per-class image set",
                                add_help=add_help)
    p.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per class")
    p.add_argument("--manifest", type=Path, help="split manifest to reuse (default: make one in --out)")
    p.add_argument("--feedback", type=Path, help="a station's feedback folder (LABEL/*.jpg) to train on too; its new "
                   "pictures are added to --manifest, which only grows: a picture once placed never moves")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder (checkpoint, report)")
    p.add_argument("--backbone", choices=BACKBONES, default="efficientnet_lite0")
    p.add_argument("--strategy", choices=STRATEGIES, default="full",
                   help="head: classifier only (the old project); last: last stages + head; full: everything")
    p.add_argument("--frozen-stages", type=int, default=0,
                   help="also freeze the stem and this many stages from the input side (their BatchNorm "
                   "stays in eval mode); they cost most of a step on a CPU and learn generic edges")
    p.add_argument("--weights", type=Path, help="ImageNet state_dict file for the backbone")
    p.add_argument("--no-pretrained", action="store_true", help="random init (tests, ablations)")
    p.add_argument("--init-from", type=Path, help="start from this checkpoint's weights (same backbone, classes)")
    p.add_argument("--ema", type=float, default=0.0, help="keep an exponential moving average of the weights "
                   "with this decay (e.g. 0.995) and validate/save it instead; 0: off")
    p.add_argument("--image-size", type=int, help="override the backbone's native input size")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--patience", type=int, default=5, help="stop after this many validations without a better val")
    p.add_argument("--val-every", type=int, default=1,
                   help="validate every N epochs and after the last (0: after the last only, so best.pt is the "
                   "last epoch and no epoch is chosen on val); an epoch of validation is an epoch less in a budget")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate (AdamW)")
    p.add_argument("--backbone-lr-scale", type=float, default=0.3, help="backbone lr = lr x this")
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--imbalance", choices=("weights", "sampler", "none"), default="weights",
                   help="class-weighted loss, WeightedRandomSampler, or nothing")
    p.add_argument("--background-p", type=float, default=0.25, help="chance of a random backdrop per image")
    p.add_argument("--scale-min", type=float, default=0.35, help="smallest area share of a random resized crop")
    p.add_argument("--trivial-augment", action="store_true", help="TrivialAugmentWide after the compositing")
    p.add_argument("--augmix", action="store_true", help="AugMix after the compositing instead (without the "
                   "operations that overlap the suite's corruptions)")
    p.add_argument("--camera-p", type=float, default=0.0,
                   help="chance of a camera fault per picture: dim light and sensor noise, defocus, JPEG")
    p.add_argument("--camera-faults", type=lambda s: tuple(s.split(",")), default=",".join(presets.CameraFaults.KINDS),
                   help="the faults drawn from, comma-separated, a name twice to draw it twice as often "
                   f"(of {', '.join(sorted(set(presets.CameraFaults.MORE)))})")
    p.add_argument("--autocontrast", type=float, metavar="PERCENT",
                   help="stretch every training picture and evaluated crop by its luma histogram, this percent "
                   "cut at each end (presets.AutoContrast); kept in the checkpoint's preprocessing, so the "
                   "bundle's server does the same")
    p.add_argument("--mixup", type=float, default=0.0, help="MixUp's alpha on each batch's labelled pictures; 0: off")
    p.add_argument("--cutmix", type=float, default=0.0,
                   help="CutMix's alpha; with --mixup too, each batch takes one of the two at random; 0: off")
    p.add_argument("--no-object-share", type=float, default=0.0,
                   help="add this many frames with no object per training picture (outlier exposure); 0: none")
    p.add_argument("--oe-weight", type=float, default=0.5, help="weight of the no-object frames' uniform loss")
    p.add_argument("--teacher", type=Path, help="a teacher's outputs on the training pictures "
                   "(`python -m export.teacher`): distil them into this network")
    p.add_argument("--distill-alpha", type=float, default=0.7, help="share of the teacher's distribution in "
                   "each picture's target (the rest is its label)")
    p.add_argument("--distill-temperature", type=float, default=1.0, help="softmax temperature on the teacher")
    p.add_argument("--probe", action="store_true", help="fit the head as a linear probe on frozen features first "
                   "(LP-FT) and keep that model as probe.pt beside best.pt (WiSE-FT's other end)")
    p.add_argument("--seed", type=int, default=constants.DEFAULT_SEED)
    p.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after N steps (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="minutes: start no epoch that would end past this (a lent GPU's budget); 0: none")
    p.add_argument("--budget", type=float, default=0.0,
                   help="minutes the epochs may take (calibration and report come after): from the second "
                   "epoch on, --epochs is cut to what still "
                   "fits at the last epoch's pace and the cosine schedule re-planned to end there (--time-limit "
                   "only stops, leaving the schedule unfinished); 0: none")
    p.add_argument("--no-report", action="store_true",
                   help="stop after training (best.pt, history.json); calibrate and report later with "
                   "`python -m training evaluate`, e.g. when the test images stay off the training machine")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_counts(samples, n_classes: int) -> torch.Tensor:
    return torch.bincount(torch.tensor([t for _, t in samples]), minlength=n_classes).float()


def make_loaders(args, manifest: dict, spec: dict, distributed: bool):
    train_tf = presets.train_preset(spec["crop"], spec["mean"], spec["std"], args.background_p, args.scale_min,
                                    args.trivial_augment, args.camera_p, args.camera_faults, spec.get("autocontrast"),
                                    args.augmix)
    eval_tf = presets.eval_preset(**spec)
    n_classes = len(manifest["classes"])
    images = data.ImageList(args.data, data.split_of(manifest, "train"), train_tf, args.feedback)
    counts = class_counts(images.samples, n_classes)
    weights = (1.0 / counts)[[t for _, t in images.samples]]
    teacher = data.read_teacher(args.teacher, manifest["classes"]) if args.teacher else None
    train_set = soft(images, teacher, args, n_classes)
    if args.no_object_share:
        frames = data.NoObjectFrames(round(args.no_object_share * len(images)), spec["crop"],
                                     presets.no_object_preset(spec["crop"], spec["mean"], spec["std"],
                                                              spec.get("autocontrast")), args.seed)
        train_set = ConcatDataset([train_set, soft(frames, teacher, args, n_classes)])
        # a frame is drawn as often as an average picture
        weights = torch.cat([weights, weights.mean().expand(len(frames))])
    sampler = None
    if distributed:
        sampler = DistributedSampler(train_set, seed=args.seed)
    elif args.imbalance == "sampler":
        sampler = WeightedRandomSampler(weights, len(train_set), generator=torch.Generator().manual_seed(args.seed))
    common = {"batch_size": args.batch_size, "num_workers": args.workers, "persistent_workers": args.workers > 0,
              "pin_memory": args.device.startswith("cuda")}
    train = DataLoader(train_set, sampler=sampler, shuffle=sampler is None, drop_last=len(train_set) > args.batch_size,
                       generator=torch.Generator().manual_seed(args.seed), **common)
    evals = {s: DataLoader(data.ImageList(args.data, data.split_of(manifest, s), eval_tf, args.feedback), **common)
             for s in ("val", "test")}
    return train, evals, counts


def soft(dataset, teacher: dict | None, args, n_classes: int):
    """The dataset with the teacher's distributions as targets (--teacher), else as it is."""
    if teacher is None:
        return dataset
    return data.SoftTargets(dataset, teacher, n_classes, args.distill_alpha, args.distill_temperature)


def make_optimizer(model, args, steps: int):
    head = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") \
        else {id(p) for p in model.fc.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) in head], "lr": args.lr},
              {"params": [p for p in params if id(p) not in head], "lr": args.lr * args.backbone_lr_scale}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=args.weight_decay)
    schedule = WarmupCosine(steps, warmup=max(1, steps // max(args.epochs, 1)))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule


class WarmupCosine:
    """LR factor: one epoch of linear warm-up, then cosine to zero at step `total`.

    `total` may be cut while training (--budget), so the decay still ends where the run does.
    """

    def __init__(self, total: int, warmup: int):
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))))


def load_or_make_manifest(args) -> dict:
    if args.manifest and args.manifest.exists():
        manifest = data.read_manifest(args.manifest)
    else:
        manifest = data.make_manifest(args.data, seed=args.seed)
        args.manifest = args.manifest or args.out / "split.json"
        data.write_manifest(manifest, args.manifest)
        log.info("split manifest written to %s", args.manifest)
    if args.feedback:
        manifest, added = data.extend_with_feedback(manifest, args.feedback, args.data)
        if added:
            data.write_manifest(manifest, args.manifest)
            log.info("%s now places %d feedback pictures more", args.manifest, added)
    return manifest


def init_distributed(args) -> tuple[bool, int]:
    """torchrun sets WORLD_SIZE/LOCAL_RANK; one process per GPU, gradients all-reduced (DDP)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False, 0
    rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    torch.distributed.init_process_group(backend)
    if args.device.startswith("cuda"):
        torch.cuda.set_device(rank)
        args.device = f"cuda:{rank}"
    return True, torch.distributed.get_rank()


def main(args) -> dict:
    if (args.mixup or args.cutmix) and args.teacher:
        raise ValueError("--mixup and --cutmix mix class indices; a --teacher's soft targets are not supported")
    presets.augment_policy(args.trivial_augment, args.augmix)  # refuses both before any work
    distributed, rank = init_distributed(args)
    seed_everything(args.seed + rank)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = load_or_make_manifest(args) if rank == 0 else None
    if distributed:
        box = [manifest]
        torch.distributed.broadcast_object_list(box, src=0)
        manifest = box[0]
    classes = manifest["classes"]
    spec = preprocess_spec(args.backbone)
    if args.image_size:
        spec.update(resize=args.image_size, crop=args.image_size)
    if args.autocontrast is not None:
        spec["autocontrast"] = args.autocontrast

    device = torch.device(args.device)
    # channels_last: faster on CPU too for these depthwise-separable networks.
    channels_last = True
    model = build_model(args.backbone, len(classes), not args.no_pretrained and not args.init_from, args.weights)
    if args.init_from:
        start = torch.load(args.init_from, map_location="cpu", weights_only=False)
        if start["backbone"] != args.backbone or start["classes"] != classes:
            raise ValueError(f"{args.init_from} is a {start['backbone']} for {start['classes']}, not this run's")
        model.load_state_dict(start["model"], strict=True)
    apply_strategy(model, args.backbone, args.strategy, args.frozen_stages)
    model.to(device, memory_format=torch.channels_last)
    train_loader, eval_loaders, counts = make_loaders(args, manifest, spec, distributed)
    log.info("classes %s, train counts %s", classes, counts.int().tolist())

    weight = (counts.sum() / (len(classes) * counts.clamp(min=1))) if args.imbalance == "weights" else None
    criterion = torch.nn.CrossEntropyLoss(weight=weight.to(device) if weight is not None else None,
                                          label_smoothing=args.label_smoothing)
    if args.no_object_share:
        criterion = OutlierExposureLoss(criterion, args.oe_weight)
    if args.probe:
        probe_loader = DataLoader(data.ImageList(args.data, data.split_of(manifest, "train"),
                                                 presets.eval_preset(**spec), args.feedback),
                                  batch_size=64, num_workers=args.workers)
        fit_probe(model, probe_loader, balanced=args.imbalance == "weights")
        save_checkpoint(args.out / "probe.pt", model, args, classes, spec, -1,
                        evaluate(model, torch.nn.CrossEntropyLoss(), eval_loaders["val"], device))
    eval_criterion = torch.nn.CrossEntropyLoss()
    steps_per_epoch = min(len(train_loader), args.max_steps or len(train_loader))
    optimizer, scheduler, schedule = make_optimizer(model, args, steps_per_epoch * args.epochs)
    scaler = torch.amp.GradScaler() if device.type == "cuda" else None
    train_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    # The averaged weights are what gets validated and saved when --ema is on: on small
    # data sets they are steadier than the last step's.
    ema = ModelEmaV3(model, decay=args.ema) if args.ema else None
    kept = ema.module if ema else model
    if args.max_steps:
        train_loader = _limit(train_loader, args.max_steps)
    mix = BatchMix(len(classes), args.mixup, args.cutmix) if args.mixup or args.cutmix else None

    best, history, stale, started = None, [], 0, time.time()

    def validate(entry: dict) -> bool:
        """Score the epoch on val, keep it as best.pt if it is the best; True: patience ran out."""
        nonlocal best, stale
        val = entry["val"] = evaluate(kept, eval_criterion, eval_loaders["val"], device, channels_last)
        log.info("epoch %d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  (%.0fs)", entry["epoch"],
                 entry["train"]["loss"], entry["train"]["acc"], val["loss"], val["acc"], entry["train"]["seconds"])
        if best is None or (val["acc"], -val["loss"]) > (best["val"]["acc"], -best["val"]["loss"]):
            best, stale = entry, 0
            save_checkpoint(args.out / "best.pt", kept, args, classes, spec, entry["epoch"], val)
            return False
        stale += 1
        if stale >= args.patience:
            log.info("early stop: no better val accuracy for %d validations", stale)
        return stale >= args.patience

    epochs, epoch = args.epochs, 0
    hard_limit = min([m for m in (args.time_limit, args.budget) if m], default=0.0)
    while epoch < epochs:
        epoch_started = time.time()
        if distributed:
            train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(train_model, criterion, optimizer, scheduler, train_loader, device, epoch,
                                scaler, channels_last, show_progress=not args.no_progress and rank == 0, ema=ema,
                                mix=mix)
        stats["lr"] = scheduler.get_last_lr()[0]  # the head's, after the epoch's last step
        stop = False
        if rank == 0:
            entry = {"epoch": epoch, "train": stats}
            history.append(entry)
            final = epoch + 1 >= epochs or over_budget(history, started, hard_limit)
            if final or (args.val_every and (epoch + 1) % args.val_every == 0):
                stop = validate(entry)
            else:
                log.info("epoch %d  train loss %.4f acc %.4f  (%.0fs)", epoch, stats["loss"], stats["acc"],
                         stats["seconds"])
            if not stop and epoch + 1 < epochs and over_budget(history, started, hard_limit):
                log.warning("time limit: stopping after epoch %d of %d (schedule not finished)", epoch, epochs)
                stop = True
            if args.budget and epoch >= 1 and not stop:
                # Epoch 0 carries one-off costs (worker start-up, autotuning): plan from epoch 1's pace.
                fit = epochs_that_fit(epoch + 1, time.time() - started, time.time() - epoch_started, args.budget)
                if fit < epochs:
                    epochs = fit
                    schedule.total = epochs * steps_per_epoch
                    log.info("budget: %d epochs fit in %g minutes at this pace; cosine re-planned to end there",
                             epochs, args.budget)
            if "val" not in entry and (stop or epoch + 1 >= epochs):
                validate(entry)  # the plan made this the last epoch after all
        if distributed:
            # All ranks leave together, or the others would wait in all-reduce forever.
            flag = [stop, epochs]
            torch.distributed.broadcast_object_list(flag, src=0)
            stop, epochs = flag
            schedule.total = epochs * steps_per_epoch
        if stop:
            break
        epoch += 1
    if distributed:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return {}
    (args.out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    # The last epoch too: a fold network kept at its best epoch was chosen on the fold it is
    # then scored on, which leans out-of-fold figures high; last.pt never looked at it.
    last = history[-1]
    save_checkpoint(args.out / "last.pt", kept, args, classes, spec, last["epoch"], last["val"])
    if args.no_report or not data.split_of(manifest, "test"):
        if not args.no_report:  # a fold manifest: its pictures are scored out of fold by `training cv`
            log.info("%s has no test split: no report (score folds with `python -m training cv`)", args.manifest)
        return {"best_epoch": best["epoch"], "val": best["val"]}
    return calibrate_and_report(args.out / "best.pt", args.data, eval_loaders, device)


class _limit:
    """A loader cut to n batches per epoch (smoke tests)."""

    def __init__(self, loader, n: int):
        self.loader, self.n, self.sampler = loader, n, loader.sampler

    def __len__(self) -> int:
        return min(self.n, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch


def over_budget(history: list[dict], started: float, minutes: float) -> bool:
    """Would one more epoch, as long as the last one, end past the limit (0: no limit)?"""
    if not minutes:
        return False
    last = history[-1]["train"]["seconds"]
    return time.time() - started + last > 60 * minutes


def epochs_that_fit(done: int, elapsed: float, pace: float, minutes: float) -> int:
    """Epochs in all (at least `done`) if each one more takes `pace` seconds and all must end by `minutes`."""
    return done + max(0, int((60 * minutes - elapsed) // pace))


def calibrate_and_report(checkpoint: Path, data_root: Path, loaders=None, device=torch.device("cpu")) -> dict:
    """Fit the temperature on val, measure test, store both in the checkpoint and the report."""
    model, ckpt = load_checkpoint(checkpoint)
    model.to(device)
    if loaders is None:
        manifest = data.read_manifest(ckpt["manifest"])
        tf = presets.eval_preset(**ckpt["preprocess"])
        loaders = {s: DataLoader(data.ImageList(data_root, data.split_of(manifest, s), tf), batch_size=32)
                   for s in ("val", "test")}
    if not len(loaders["test"].dataset):
        raise ValueError(f"{ckpt['manifest']} has no test split to report on (a fold manifest?)")
    start = time.time()
    val_logits, val_targets = predict(model, loaders["val"], device)
    temperature = fit_temperature(val_logits, val_targets)
    test_logits, test_targets = predict(model, loaders["test"], device)
    classes = ckpt["classes"]
    metrics = {
        "backbone": ckpt["backbone"], "strategy": strategy_label(ckpt), "best_epoch": ckpt["epoch"],
        "temperature": temperature,
        "val": classification_metrics(val_logits, val_targets, classes, temperature),
        "test": classification_metrics(test_logits, test_targets, classes, temperature),
        "manifest": ckpt["manifest"],
    }
    ckpt.update(temperature=temperature, metrics=metrics)
    atomic_save(ckpt, checkpoint)
    write_report(Path(checkpoint).parent / "report", Path(checkpoint).parent.name, metrics, classes)
    log.info("test accuracy %.4f, ECE %.4f -> %.4f (T=%.3f), report in %s (%.0fs)",
             metrics["test"]["accuracy"], metrics["test"]["ece_before"], metrics["test"]["ece_after"],
             temperature, Path(checkpoint).parent / "report", time.time() - start)
    return metrics
