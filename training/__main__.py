"""`python -m training {split,fit,evaluate,compare,folds,cv,pool,pair,selective,robustness,wise,bnstats} --help`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import bnstats, compare, cv, data, pair, recipes, robustness, selective
from . import pool as pool_folds
from . import wise as wise_ft
from .models import VIEWS
from .train import calibrate_and_report, get_args_parser, main


def _renames(pairs: list[str]) -> dict[str, str]:
    if any(p.count("=") != 1 for p in pairs):
        raise ValueError(f"--as takes OLD=NEW, got {pairs}")
    return dict(p.split("=") for p in pairs)


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", parents=[get_args_parser(add_help=False)], help="train a model")
    fit.set_defaults(run=lambda a: main(a))
    split = sub.add_parser("split", help="dedup and split a folder into a manifest")
    split.add_argument("--data", type=Path, required=True)
    split.add_argument("--out", type=Path, required=True, help="manifest JSON to write")
    split.add_argument("--seed", type=int, default=42)
    split.set_defaults(run=lambda a: data.write_manifest(data.make_manifest(a.data, seed=a.seed), a.out))
    ev = sub.add_parser("evaluate", help="calibrate a checkpoint on val and report on test")
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--data", type=Path, required=True)
    ev.set_defaults(run=lambda a: calibrate_and_report(a.checkpoint, a.data))
    cmp = sub.add_parser("compare", help="checkpoints alone and as one ensemble, at several input sizes")
    cmp.add_argument("checkpoints", type=Path, nargs="+")
    cmp.add_argument("--data", type=Path, required=True)
    cmp.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], required=True,
                     help="input sizes, comma-separated, e.g. 260,296")
    cmp.add_argument("--out", type=Path, help="folder for compare.md and compare.json")
    cmp.add_argument("--max-members", type=int, default=0, help="largest ensemble to try (0: all of them)")
    cmp.set_defaults(run=lambda a: compare.run(a.checkpoints, a.data, a.sizes, a.out, a.max_members))
    folds = sub.add_parser("folds", help="cut train+val of a manifest into k fold manifests (test left out)")
    folds.add_argument("--manifest", type=Path, required=True, help="split manifest whose train+val to cut")
    folds.add_argument("--data", type=Path, required=True, help="dataset folder (near-duplicates are re-found)")
    folds.add_argument("--k", type=int, default=3, help="number of folds (3: training/splits/cv3/)")
    folds.add_argument("--seed", type=int, default=42)
    folds.add_argument("--out", type=Path, required=True, help="folder for fold-0.json ... fold-(k-1).json")
    folds.set_defaults(run=lambda a: cv.write_folds(a.manifest, a.data, a.k, a.seed, a.out))
    cvp = sub.add_parser("cv", help="pool out-of-fold predictions per recipe and compare recipes")
    cvp.add_argument("--recipe", nargs="+", action="append", required=True, metavar=("NAME", "CHECKPOINT"),
                     help="a name and the checkpoints of its fold fits (fits of one fold are averaged, "
                     "as export's ensemble graph does); repeat for each recipe")
    cvp.add_argument("--data", type=Path, required=True)
    cvp.add_argument("--size", type=int, help="input size for all (default: each fold's first network's)")
    cvp.add_argument("--views", type=int, choices=VIEWS, default=1,
                     help="average each network over flips: 1 none, 2 and the mirror, 4 and upside down too")
    cvp.add_argument("--autocontrast", type=float, metavar="PERCENT",
                     help="stretch each crop by its luma histogram first, PERCENT clipped at each end")
    cvp.add_argument("--out", type=Path, help="folder for cv.md and cv.json")
    cvp.set_defaults(run=lambda a: cv.run(a.recipe, a.data, a.size, a.out, a.views, a.autocontrast))
    pl = sub.add_parser("pool", help="cv.json files of different folds as one (folds fitted in separate runs)")
    pl.add_argument("results", type=Path, nargs="+", metavar="cv_json")
    pl.add_argument("--as", dest="renames", action="append", default=[], metavar="OLD=NEW",
                    help="read recipe OLD as NEW where a file holds it; repeat for more")
    pl.add_argument("--out", type=Path, required=True, help="folder for the pooled cv.json and cv.md")
    pl.set_defaults(run=lambda a: pool_folds.main(a.results, a.out, _renames(a.renames)))
    pr = sub.add_parser("pair", help="two cv.json or two suite results on the same pictures, paired")
    pr.add_argument("a", type=Path)
    pr.add_argument("b", type=Path)
    pr.add_argument("--name-a", help="A's recipe, where its cv.json holds several")
    pr.add_argument("--name-b", help="B's recipe, where its cv.json holds several")
    pr.add_argument("--part", choices=pair.PARTS, default="clean", help="which part of two suite results")
    pr.add_argument("--also", nargs=2, action="append", default=[], type=Path, metavar=("A", "B"),
                    help="another fold's two results, pooled with the first pair; repeat for more")
    pr.set_defaults(run=lambda a: pair.main(a.a, a.b, a.name_a, a.name_b, a.part, a.also))
    sel = sub.add_parser("selective", help="a cv.json's predictions answered at a given temperature and threshold")
    sel.add_argument("cv", type=Path, help="cv.json of `training cv` or `export.oof`")
    sel.add_argument("--name", help="its recipe, where it holds several")
    sel.add_argument("--temperature", type=float, required=True)
    sel.add_argument("--uncertain-below", type=float, required=True, help="'not sure' below this confidence")
    sel.set_defaults(run=lambda a: selective.score_file(a.cv, a.name, a.temperature, a.uncertain_below))
    rob = sub.add_parser("robustness", help="the robustness suite on a checkpoint's held-out pictures")
    rob.add_argument("checkpoints", type=Path, nargs="+", metavar="checkpoint",
                     help="one, or one per fold: each on its own fold's held-out pictures (--split val), pooled")
    rob.add_argument("--data", type=Path, required=True)
    rob.add_argument("--split", choices=("val", "test"), default="val",
                     help="val to choose on; test only to report a choice already made")
    rob.add_argument("--limit", type=int, default=0, help="about this many pictures, evenly spaced (0: all)")
    rob.add_argument("--out", type=Path, required=True, help="folder for robustness.md and robustness.json")
    rob.add_argument("--size", type=int, help="serve at this input size instead of the training size")
    rob.add_argument("--temperature", type=float,
                     help="divide the logits by this instead of the checkpoint's own (an out-of-fold calibration)")
    rob.add_argument("--uncertain-below", type=float,
                     help="'not sure' below this calibrated confidence instead of the checkpoint's own")
    rob.set_defaults(run=lambda a: robustness.main(a.checkpoints, a.data, a.split, a.out, a.limit, size=a.size,
                                                   temperature=a.temperature, uncertain_below=a.uncertain_below))
    wise = sub.add_parser("wise", help="WiSE-FT: interpolate a fine-tuned checkpoint towards its probe.pt")
    wise.add_argument("probe", type=Path)
    wise.add_argument("finetuned", type=Path)
    wise.add_argument("--alpha", type=float, required=True, help="0: the probe, 1: the fine-tuned network")
    wise.add_argument("--out", type=Path, required=True)
    wise.set_defaults(run=lambda a: wise_ft.main(a.probe, a.finetuned, a.alpha, a.out))
    bn = sub.add_parser("bnstats", help="BatchNorm statistics gathered again at the serving size")
    bn.add_argument("checkpoint", type=Path)
    bn.add_argument("--data", type=Path, required=True)
    bn.add_argument("--size", type=int, required=True, help="the input size the network will be served at")
    bn.add_argument("--passes", type=int, default=1, help="passes over the training pictures")
    bn.add_argument("--workers", type=int, help="data loader workers (default: the fit's)")
    bn.add_argument("--out", type=Path, required=True)
    bn.set_defaults(run=lambda a: bnstats.main(a.checkpoint, a.data, a.size, a.out, a.passes, a.workers))
    fit.add_argument("--recipe", help="a file of training/recipes/ (NAME or NAME.toml): its values become the "
                     "defaults, flags given here still win")
    known, _ = parser.parse_known_args(argv)
    if known.command == "fit" and known.recipe:
        fit.set_defaults(**recipes.load(known.recipe))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as exc:  # bad data or arguments: one line, exit 2
        logging.getLogger("training").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
