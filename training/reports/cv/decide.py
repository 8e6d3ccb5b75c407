"""selection-rule.md's steps 3 and 4 as code: read cv.json, print the decision and the export command.

    python training/reports/cv/decide.py training/reports/cv/cv.json [--budget budget --reference gpu]

Exit 0 either way; the first line says which. Nothing here looks at test. The budget pair's fits must
have ended within 90 minutes (the last line of --train-log, written by ../cpu-pair/run.sh), or it is void.
Step 4 then sets the recall-floor offset for whichever pair ships; the command is printed when the shipped
bundle changes (SHIP, or KEEP with an offset: the GPU pair re-exported).
"""

import argparse
import json
import re
import sys
from pathlib import Path

MARGIN = 0.005  # the budget recipe may trail by at most 0.5 points out of fold
BUDGET_S = 90 * 60
MIN_LIFT = 0.03  # a tau is used only if it lifts the out-of-fold lowest recall by 3 points
FLOOR_COST = 0.005  # step 4: a recall-floor offset may cost at most 0.5 points out of fold
EXPORT = ("python -m export {members} --image-size 296 "
          "--data ../shared/data/trashnet/dataset-resized --out models/ecosort --report training/reports/shipped")
MEMBERS = {"budget": "runs/cpu-q1/best.pt runs/cpu-q2/best.pt", "gpu": "runs/g1/best.pt runs/h2/best.pt"}


def decide(result: dict, budget: str, reference: str) -> tuple[bool, float | None, list[str]]:
    b, r = result["scores"][budget], result["scores"][reference]
    lines = [f"{name}: out-of-fold top-1 {100 * s['accuracy']:.2f}% of {s['n']}, lowest recall "
             f"{100 * s['lowest_recall']:.1f}% ({s['lowest_recall_class']})"
             for name, s in ((budget, b), (reference, r))]
    ship = b["accuracy"] >= r["accuracy"] - MARGIN
    adj = b["logit_adjustment"]
    lift = adj["lowest_recall"] - b["lowest_recall"]
    tau = adj["tau"] if ship and adj["tau"] > 0 and lift >= MIN_LIFT - 1e-9 else None
    lines.append(f"{budget}'s tau {adj['tau']:.2f}: lowest recall {100 * b['lowest_recall']:.1f}% -> "
                 f"{100 * adj['lowest_recall']:.1f}% ({100 * lift:+.1f} points; {100 * MIN_LIFT:.0f} needed)")
    return ship, tau, lines


def recall_floor(score: dict, tau: float | None) -> tuple[str | None, list[str]]:
    """Step 4: the export argument for the floor offset, or None; and what it costs out of fold."""
    if "recall_floor" not in score:
        return None, ["step 4: cv.json has no recall_floor (made by an older `cv`): not applied"]
    f = score["recall_floor"]["with_tau" if tau is not None else "plain"]
    head = f"step 4: lowest out-of-fold recall {100 * f['recall_before']:.1f}% ({f['class']})"
    if f["offset"] is None:
        reached = f["recall_before"] >= 0.9
        return None, [head + (": at the floor already" if reached else ": no offset <= 3 reaches 90%")]
    cost = f["accuracy_before"] - f["accuracy"]
    line = (f"{head}; offset +{f['offset']:.2f} on {f['class']}: top-1 {100 * f['accuracy_before']:.2f}% -> "
            f"{100 * f['accuracy']:.2f}% ({100 * cost:.2f} points; at most {100 * FLOOR_COST:.1f}), lowest recall "
            f"{100 * f['lowest_recall']:.1f}% ({f['lowest_recall_class']}), {f['class']} precision "
            f"{100 * f['precision_before']:.1f}% -> {100 * f['precision']:.1f}%")
    used = cost <= FLOOR_COST + 1e-9
    return (f"--class-offset {f['class']}={f['offset']}" if used else None), [line + ("" if used else ": not used")]


def training_seconds(log: Path) -> int | None:
    found = re.findall(r"both members: (\d+) s", log.read_text()) if log.exists() else []
    return int(found[-1]) if found else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cv_json")
    p.add_argument("--budget", default="budget")
    p.add_argument("--reference", default="gpu")
    p.add_argument("--train-log", type=Path, default=Path(__file__).with_name("train.log"))
    args = p.parse_args()
    result = json.load(open(args.cv_json))
    ship, tau, lines = decide(result, args.budget, args.reference)
    seconds = training_seconds(args.train_log)
    lines.append(f"budget pair's fits: {seconds} s (at most {BUDGET_S})")
    partial = [n for n in (args.budget, args.reference)
               if len(result["scores"][n].get("folds", [])) != result["scores"][n].get("k")]
    if partial:
        lines.append(f"VOID: {', '.join(partial)} not scored on every fold")
    if seconds is None or seconds > BUDGET_S or partial:
        ship, tau = False, None
    shipped = args.budget if ship else args.reference
    if partial:
        offset, floor_lines = None, ["step 4: void with step 3"]
    else:
        offset, floor_lines = recall_floor(result["scores"][shipped], tau)
    print("SHIP the budget pair" if ship else "KEEP the GPU pair")
    print("\n".join(lines + floor_lines))
    if ship or offset:  # on KEEP without an offset the shipped bundle stays as it is
        extra = (f" --logit-tau {tau}" if tau is not None else "") + (f" {offset}" if offset else "")
        print(EXPORT.format(members=MEMBERS.get(shipped, shipped)) + extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
