"""Two results on the same pictures, paired: `python -m training pair A.json B.json`.

Either two `cv.json` (out-of-fold predictions; --name picks a recipe where a file holds
several) or two suite `robustness.json` of one split (--part: clean, corruptions or
backgrounds). The difference of A and B has an interval over pictures (stats.paired_difference).
More pairs (`--also A2 B2`, each another fold's two results) are pooled with the first:
their pictures are disjoint, so the hits are stacked before the interval is taken.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import stats

log = logging.getLogger(__name__)
PARTS = ("clean", "corruptions", "backgrounds")


def _recipe(result: dict, name: str | None, path: Path) -> dict:
    predictions = result["predictions"]
    if name is None and len(predictions) == 1:
        return next(iter(predictions.values()))
    if name not in predictions:
        raise ValueError(f"{path} holds recipes {', '.join(predictions)}: name one")
    return predictions[name]


def out_of_fold_hits(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two results share no picture")

    def right(p: dict) -> np.ndarray:
        return np.array([int(np.argmax(p[k]["probabilities"])) == p[k]["target"] for k in common], int)

    return right(a), right(b)


def suite_hits(a: dict, b: dict, part: str) -> tuple[np.ndarray, np.ndarray]:
    if a.get("split") != b.get("split") or a["clean"]["n"] != b["clean"]["n"]:
        raise ValueError("the two suites were not run on the same pictures")
    if "per_picture" not in a or "per_picture" not in b:
        raise ValueError("a suite result without per-picture hits: run it again")
    return np.array(a["per_picture"][part]), np.array(b["per_picture"][part])


def hits_of(a: dict, b: dict, paths: tuple[Path, Path], name_a: str | None, name_b: str | None,
            part: str) -> tuple[np.ndarray, np.ndarray]:
    if "predictions" in a and "predictions" in b:
        return out_of_fold_hits(_recipe(a, name_a, paths[0]), _recipe(b, name_b, paths[1]))
    if "per_picture" in a or "per_picture" in b or "corruptions" in a:
        return suite_hits(a, b, part)
    raise ValueError("pair takes two cv.json or two robustness.json")


def main(a_path: Path, b_path: Path, name_a: str | None = None, name_b: str | None = None,
         part: str = "clean", also: list[tuple[Path, Path]] = ()) -> dict:
    pairs = [(Path(a_path), Path(b_path)), *((Path(a), Path(b)) for a, b in also)]
    results = [tuple(json.loads(p.read_text()) for p in pair) for pair in pairs]
    kinds = {"corruptions" in a for a, _ in results}
    if len(kinds) > 1:
        raise ValueError("pair pools cv.json with cv.json or suites with suites, not both")
    hits = [hits_of(a, b, paths, name_a, name_b, part) for (a, b), paths in zip(results, pairs)]
    a_hits, b_hits = (np.concatenate([h[i] for h in hits]) for i in (0, 1))
    result = {"a": [str(a) for a, _ in pairs], "b": [str(b) for _, b in pairs],
              "part": part if kinds.pop() else "out_of_fold", **stats.paired_difference(a_hits, b_hits)}
    print(json.dumps(result, indent=1))
    return result
