"""`python -m training {split,fit,evaluate} --help`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import data
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
