"""Training recipes as data (nanoGPT's config/ idea): one TOML file per recipe."""

from __future__ import annotations

import tomllib
from pathlib import Path

HERE = Path(__file__).parent


def path_of(name: str) -> Path:
    path = Path(name)
    if path.suffix != ".toml":
        path = HERE / f"{name}.toml"
    return path


def load(name: str) -> dict:
    """The recipe's values, keyed as `fit`'s argument names (dashes as underscores)."""
    path = path_of(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in HERE.glob("*.toml")))
        raise FileNotFoundError(f"no recipe {name!r} (known: {known})")
    with open(path, "rb") as f:
        return {k.replace("-", "_"): v for k, v in tomllib.load(f).items()}
