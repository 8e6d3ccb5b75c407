"""selection-rule.md's step 5 as code: are test-time flips used? Nothing here looks at test.

    python training/reports/cv/decide_views.py training/reports/cv/cv.json \
        training/reports/cv-views-2/cv.json training/reports/cv-views-4/cv.json [--recipe budget]

The first file is the plain out-of-fold run, the others the same networks with --views. Views pass if
the lowest out-of-fold recall reaches the floor, as they are or with step 4's offset fitted on their
logits (cv's recall_floor, "plain"), at most 0.5 points of top-1 below the plain run. The fewest views
that pass are used. Exit 0 either way; the first line says which.
"""

import argparse
import json
import sys

from decide import EXPORT, FLOOR_COST, MEMBERS


def judge(plain: dict, result: dict, recipe: str) -> tuple[bool, str | None, list[str]]:
    """Whether these views pass, the offset they need (CLASS=b, or None), and the lines that say why."""
    ref, s = plain["scores"][recipe], result["scores"][recipe]
    views, floor = result["views"], result["floor"]
    head = (f"{views} views: out-of-fold top-1 {100 * s['accuracy']:.2f}% (plain {100 * ref['accuracy']:.2f}%), "
            f"lowest recall {100 * s['lowest_recall']:.1f}% ({s['lowest_recall_class']}; plain "
            f"{100 * ref['lowest_recall']:.1f}%)")
    if len(s.get("folds", [])) != s.get("k") or s["n"] != ref["n"]:
        return False, None, [head + ": VOID, not scored on the same pictures as the plain run"]
    offset, accuracy, lowest = None, s["accuracy"], s["lowest_recall"]
    if lowest < floor:
        f = s["recall_floor"]["plain"]
        if f["offset"] is None:
            return False, None, [head + f": no offset <= 3 takes {f['class']} to {100 * floor:.0f}%: not used"]
        offset, accuracy, lowest = f"{f['class']}={f['offset']}", f["accuracy"], f["lowest_recall"]
        head += (f"; offset +{f['offset']:.2f} on {f['class']}: top-1 {100 * accuracy:.2f}%, lowest recall "
                 f"{100 * lowest:.1f}% ({f['lowest_recall_class']}), {f['class']} precision "
                 f"{100 * f['precision_before']:.1f}% -> {100 * f['precision']:.1f}%")
    cost = ref["accuracy"] - accuracy
    passed = lowest >= floor - 1e-9 and cost <= FLOOR_COST + 1e-9
    return passed, offset, [head + f" ({100 * cost:+.2f} points against plain; at most {100 * FLOOR_COST:.1f}): "
                            + ("passes" if passed else "not used")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plain_json")
    p.add_argument("views_json", nargs="+")
    p.add_argument("--recipe", default="budget")
    args = p.parse_args()
    plain = json.load(open(args.plain_json))
    results = sorted((json.load(open(path)) for path in args.views_json), key=lambda r: r["views"])
    lines, chosen = [], None
    for result in results:
        passed, offset, said = judge(plain, result, args.recipe)
        lines += said
        if passed and chosen is None:
            chosen = result["views"], offset
    if chosen is None:
        print("NO VIEWS: nothing changes")
        print("\n".join(lines))
        return 0
    views, offset = chosen
    print(f"USE {views} VIEWS" + (f" with offset {offset}" if offset else ""))
    print("\n".join(lines))
    print(EXPORT.format(members=MEMBERS[args.recipe]) + f" --views {views}"
          + (f" --class-offset {offset}" if offset else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
