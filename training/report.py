"""The report a person reads: metrics JSON, confusion matrix (JSON + PNG), Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from .calibration import ece
from .stats import wilson


def classification_metrics(logits, targets, classes: list[str], temperature: float) -> dict:
    y_true, y_pred = targets.numpy(), logits.argmax(1).numpy()
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "n": int(len(y_true)),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "ece_before": ece(logits, targets, 1.0),
        "ece_after": ece(logits, targets, temperature),
    }


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless kiosk build machines have no display
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.sum(1)[i] / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_markdown(name: str, metrics: dict, classes: list[str]) -> str:
    test, val = metrics["test"], metrics["val"]
    lines = [
        f"# {name}",
        "",
        f"- backbone: `{metrics['backbone']}`, strategy `{metrics['strategy']}`, best epoch {metrics['best_epoch']}",
        f"- test accuracy: **{100 * test['accuracy']:.2f}%** on {test['n']} images "
        f"(95% interval {interval(test['accuracy'], test['n'])}; val {100 * val['accuracy']:.2f}% on {val['n']})",
        f"- temperature {metrics['temperature']:.3f}: test ECE {100 * test['ece_before']:.2f}% "
        f"before, {100 * test['ece_after']:.2f}% after",
        *adjustment_lines(metrics.get("logit_adjustment")),
        "",
        "| class | precision | recall | recall, 95% interval | F1 | support |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in classes:
        m = test["per_class"][c]
        lines.append(f"| {c} | {100 * m['precision']:.1f}% | {100 * m['recall']:.1f}% | "
                     f"{interval(m['recall'], m['support'])} | {100 * m['f1']:.1f}% | {m['support']} |")
    lines += ["", "![confusion matrix](confusion.png)", ""]
    return "\n".join(lines)


def interval(share: float, n: int) -> str:
    """Wilson 95% interval of a share of n pictures: on a small class one picture is several points."""
    low, high = wilson(round(share * n), n)
    return f"{100 * low:.1f}-{100 * high:.1f}%"


def adjustment_lines(adjustment: dict | None) -> list[str]:
    """What the bundle adds to the logits (a tau over the class priors, one class's offset) and
    what the test split says without it."""
    if not adjustment:
        return []
    raw = adjustment["unadjusted"]
    parts = []
    if adjustment.get("tau_from") is not None:
        source = "given" if adjustment["tau_from"] == "given" else "fitted on val"
        parts.append(f"tau {adjustment['tau']:.2f} ({source}; 0 = none)")
    parts += [f"offset {value:+.2f} on {name}" for name, value in (adjustment.get("class_offset") or {}).items()]
    return [f"- logit adjustment: {', '.join(parts) or 'none'}; without it test "
            f"{100 * raw['test']['accuracy']:.2f}%, lowest recall {100 * raw['test']['lowest_recall']:.1f}% "
            f"(val {100 * raw['val']['accuracy']:.2f}%, {100 * raw['val']['lowest_recall']:.1f}%)"]


def write_report(folder: Path, name: str, metrics: dict, classes: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (folder / "confusion.json").write_text(json.dumps(
        {"classes": classes, "rows_true_cols_predicted": metrics["test"]["confusion"]}) + "\n")
    plot_confusion(metrics["test"]["confusion"], classes, folder / "confusion.png", f"{name}: test split")
    (folder / "summary.md").write_text(summary_markdown(name, metrics, classes))
