"""`python -m training {split,fit,evaluate,compare} --help`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import compare, data
from .train import calibrate_and_report, get_args_parser, main


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
