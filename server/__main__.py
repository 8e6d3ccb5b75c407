"""`python -m server check [BUNDLE_JSON]`: load, verify and warm the bundle the way a worker
would, in a process of its own; one line out, exit 0 or 2. gunicorn's master runs it
before forking any worker, so a bad bundle stops the start instead of a respawn loop.

`python -m server front`: nginx on FRONT_BIND in front of gunicorn on BIND (server/front.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import kiosk
from .bundle import BundleError, for_this_cpu, load_bundle
from .config import Config
from .runtime import Runtime


def check(model: Path) -> str:
    bundle = for_this_cpu(load_bundle(model, verify_sha256=False), verify_sha256=False)  # Runtime verifies
    runtime = Runtime(bundle, threads=1)
    runtime.warm_up(runs=1)
    kiosk.load(Config.from_env().kiosk_config, bundle.classes)  # a bad station file stops the start too
    return f"ok: {bundle.name} ({bundle.sha256[:12]}), {len(bundle.classes)} classes, input {list(bundle.input.shape)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("check", help="verify a model bundle (default: $MODEL or the shipped one)")
    cmd.add_argument("model", nargs="?", type=Path)
    sub.add_parser("front", help="run nginx (FRONT_BIND) in front of gunicorn (BIND) until either stops")
    args = parser.parse_args(argv)
    if args.command == "front":
        import logging

        from . import front, logs

        logging.basicConfig(level=logging.INFO)
        logs.use_json()
        try:
            return front.run(Config.from_env())
        except ValueError as exc:
            print(f"ecosort: cannot start: {exc}", file=sys.stderr)
            return 2
    try:
        print(check(args.model or Config.from_env().model))
    except (BundleError, ValueError) as exc:
        print(f"ecosort: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
