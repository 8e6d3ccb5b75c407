"""Calibration fitted on val: the logit adjustment's fit, and the server applying the bundle's offsets."""

import json

import numpy as np
import pytest
import torch

from server import create_app
from server.bundle import BundleError, load_bundle
from tests.helpers import CLASSES, W, solid
from training.calibration import fit_class_offset, fit_logit_adjustment, lowest_recall, prior_offsets
from training.report import adjustment_lines


def skewed(n_common: int = 60, n_rare: int = 10, margin: float = 0.6, seed: int = 0):
    """Three classes; the rare one (2) scores `margin` under where it should, as a network
    trained on few of its pictures would: half its pictures go to class 0."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.tensor([0] * n_common + [1] * n_common + [2] * n_rare)
    logits = torch.randn(len(targets), 3, generator=g) * 0.3
    logits[torch.arange(len(targets)), targets] += 1.5
    logits[targets == 2, 2] -= 1.5 + margin * torch.rand(n_rare, generator=g) * 2
    return logits, targets


def test_prior_offsets_favour_rare_classes_and_are_centred():
    offsets = prior_offsets([100, 100, 10], 1.0)
    assert offsets[2] - offsets[0] == pytest.approx(np.log(10), abs=1e-5)
    assert float(offsets.sum()) == pytest.approx(0, abs=1e-5)
    assert torch.equal(prior_offsets([100, 100, 10], 0.0), torch.zeros(3))


def test_fit_lifts_the_lowest_recall_within_the_allowed_cost():
    logits, targets = skewed()
    counts = [300, 300, 50]
    before = lowest_recall(logits, targets)
    tau = fit_logit_adjustment(logits, targets, counts)
    adjusted = logits + prior_offsets(counts, tau)
    assert tau > 0 and lowest_recall(adjusted, targets) > before
    lost = int((logits.argmax(1) == targets).sum()) - int((adjusted.argmax(1) == targets).sum())
    assert lost <= 2
    # Allowed to lose nothing, it must still not lose anything.
    strict = fit_logit_adjustment(logits, targets, counts, max_drop=0)
    kept = logits + prior_offsets(counts, strict)
    assert int((kept.argmax(1) == targets).sum()) >= int((logits.argmax(1) == targets).sum())


def test_fit_leaves_a_balanced_model_alone():
    targets = torch.arange(3).repeat(20)
    logits = torch.nn.functional.one_hot(targets, 3).float() * 5  # every class already at 100%
    assert fit_logit_adjustment(logits, targets, [300, 300, 50]) == 0.0


def test_class_offset_is_the_smallest_that_meets_the_floor():
    logits, targets = skewed()
    rare = targets == 2

    def recall(offset):
        shifted = logits.clone()
        shifted[:, 2] += offset
        return float((shifted[rare].argmax(1) == 2).float().mean())

    assert recall(0.0) < 0.9
    offset = fit_class_offset(logits, targets, 2, floor=0.9)
    assert offset is not None and recall(offset) >= 0.9 and recall(round(offset - 0.05, 2)) < 0.9
    # A floor no offset on the grid reaches, and a class already over it.
    assert fit_class_offset(logits, targets, 2, floor=0.9, offsets=[0.01]) is None
    assert fit_class_offset(logits, targets, 0, floor=0.5) == 0.0


def with_offsets(tiny_bundle, tmp_path, offsets):
    for p in tiny_bundle.parent.glob("tiny.*"):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    raw = json.loads((tmp_path / "tiny.json").read_text())
    raw["calibration"]["logit_offsets"] = offsets
    (tmp_path / "tiny.json").write_text(json.dumps(raw))
    return tmp_path / "tiny.json"


@pytest.mark.parametrize("tau_from, class_offset, says", [
    ("val", None, "logit adjustment: tau 0.30 (fitted on val; 0 = none); without it test 91.00%"),
    ("given", {"trash": 0.75}, "logit adjustment: tau 0.30 (given; 0 = none), offset +0.75 on trash; without"),
    (None, {"trash": 0.75}, "logit adjustment: offset +0.75 on trash; without it test 91.00%, lowest recall 80.0%"),
])
def test_report_says_what_the_adjustment_is(tau_from, class_offset, says):
    raw = {"accuracy": 0.91, "lowest_recall": 0.8}
    adjustment = {"tau": 0.3 if tau_from else 0.0, "tau_from": tau_from, "class_offset": class_offset,
                  "unadjusted": {"val": raw, "test": raw}}
    assert says in adjustment_lines(adjustment)[0]
    assert adjustment_lines(None) == []


def test_server_adds_the_offsets_before_the_temperature(tiny_bundle, tmp_path):
    red = solid((255, 0, 0))  # cardboard by 9 logits over glass and metal (tests/helpers.py)
    offsets = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    offsets[CLASSES.index("trash")] = 1.0
    client = create_app({"model": with_offsets(tiny_bundle, tmp_path, offsets), "ort_threads": 1}).test_client()
    body = client.post("/v1/classify?top_k=6", data=red).get_json()
    raw = np.array([1.0, -1.0, -1.0]) @ W + np.array(offsets)
    expected = np.exp((raw - raw.max()) / 1.5)
    expected /= expected.sum()
    got = {row["label"]: row["probability"] for row in body["top_k"]}
    assert got["trash"] == pytest.approx(expected[CLASSES.index("trash")], abs=1e-4)
    # A large enough offset changes the answer: the offsets are applied, not just stored.
    offsets[CLASSES.index("trash")] = 20.0
    client = create_app({"model": with_offsets(tiny_bundle, tmp_path, offsets), "ort_threads": 1}).test_client()
    assert client.post("/v1/classify", data=red).get_json()["label"] == "trash"


@pytest.mark.parametrize("offsets", [[1.0, 2.0], "0", [0, 0, 0, 0, 0, float("nan")], [0, 0, 0, 0, 0, True]])
def test_bundle_refuses_offsets_that_do_not_fit_the_classes(tiny_bundle, tmp_path, offsets):
    path = with_offsets(tiny_bundle, tmp_path, offsets)
    if offsets == [0, 0, 0, 0, 0, float("nan")]:
        path.write_text(path.read_text().replace("NaN", "1e999"))  # JSON has no NaN: an overflow instead
    with pytest.raises(BundleError, match="logit_offsets"):
        load_bundle(path)


def test_bundle_without_offsets_is_unadjusted(tiny_bundle):
    assert load_bundle(tiny_bundle).calibration.logit_offsets is None
