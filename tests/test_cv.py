"""k-fold cross-validation (`python -m training folds` / `cv`) and the statistics it reports."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import fit
from tests.helpers import make_dataset
from training import cv, data, pair, stats
from training.__main__ import cli
from training.checkpoint import load_checkpoint
from training.compare import probabilities


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    low, high = stats.wilson(17, 21)  # the shipped pair's test trash recall
    assert low == pytest.approx(0.6000, abs=1e-3) and high == pytest.approx(0.9233, abs=1e-3)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0
    assert stats.wilson(10, 10)[0] < 1.0  # ten out of ten is not proof of perfection
    assert all(math.isnan(x) for x in stats.wilson(0, 0))


def test_mcnemar_exact_p():
    assert stats.mcnemar(0, 0) == 1.0
    assert stats.mcnemar(0, 6) == pytest.approx(2 / 64)  # six disagreements, all one way
    assert stats.mcnemar(6, 0) == stats.mcnemar(0, 6)
    assert stats.mcnemar(5, 5) == 1.0
    assert stats.mcnemar(2, 8) == pytest.approx(0.109375)  # 2 * P(X <= 2), X ~ Bin(10, 1/2)


def test_recall_skips_classes_with_no_pictures():
    pred, targets = torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1])
    recall = stats.per_class_recall(pred, targets, 3)
    assert recall[:2] == [1.0, 0.5] and math.isnan(recall[2])
    assert stats.lowest(recall) == (1, 0.5)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("images"), per_class=12)
    Image.open(root / "glass" / "glass3.jpg").save(root / "glass" / "glass3-copy.png")  # a near-duplicate
    manifest_path = root.parent / "split.json"
    data.write_manifest(data.make_manifest(root), manifest_path)
    return root, manifest_path


def test_folds_cover_train_and_val_once_and_never_test(pool, tmp_path):
    root, manifest_path = pool
    assert cli(["folds", "--manifest", str(manifest_path), "--data", str(root), "--k", "3",
                "--out", str(tmp_path)]) == 0
    manifest = data.read_manifest(manifest_path)
    folds = [data.read_manifest(tmp_path / f"fold-{i}.json") for i in range(3)]
    pool_paths = {it["path"] for it in manifest["items"] if it["split"] != "test"}
    held = [{it["path"] for it in f["items"] if it["split"] == "val"} for f in folds]
    assert set.union(*held) == pool_paths and sum(map(len, held)) == len(pool_paths)  # each once
    for f in folds:
        assert {it["path"] for it in f["items"]} == pool_paths  # test pictures are in no fold
        assert all(n >= 1 for n in f["counts"]["val"].values())  # stratified
        assert f["cv"]["k"] == 3 and f["cv"]["pool"] == folds[0]["cv"]["pool"]
    assert any({"glass/glass3.jpg", "glass/glass3-copy.png"} <= h for h in held)  # duplicates stay together
    again = cv.make_folds(manifest, root, 3, 42)
    assert [f["items"] for f in again] == [f["items"] for f in folds]
    assert [f["items"] for f in cv.make_folds(manifest, root, 3, 7)] != [f["items"] for f in folds]


@pytest.fixture(scope="module")
def fold_fits(pool, tmp_path_factory):
    """Two tiny networks on each of 2 folds: recipe "a" (seed 1) and "b" (seed 2)."""
    root, manifest_path = pool
    out = tmp_path_factory.mktemp("cv")
    manifests = cv.write_folds(manifest_path, root, 2, 42, out / "folds")
    runs = {}
    for name, seed in (("a", "1"), ("b", "2")):
        for i, m in enumerate(manifests):
            # Without --no-report too: a fold manifest has no test split, so the fit just skips its report.
            extra = ("--no-report",) if name == "a" else ()
            fit(root, out / f"{name}{i}", "--manifest", str(m), "--seed", seed, "--max-steps", "2", *extra)
            runs[name, i] = out / f"{name}{i}" / "best.pt"
    return root, runs


def test_a_fold_fit_has_no_report_and_evaluate_says_why(fold_fits, caplog):
    root, runs = fold_fits
    assert runs["b", 0].exists() and not (runs["b", 0].parent / "report").exists()
    with caplog.at_level(logging.ERROR):
        assert cli(["evaluate", str(runs["b", 0]), "--data", str(root)]) == 2
    assert "has no test split" in caplog.text


def test_cv_pools_every_picture_once_and_pairs_recipes(fold_fits, tmp_path):
    root, runs = fold_fits
    assert cli(["cv", "--recipe", "a", str(runs["a", 0]), str(runs["a", 1]),
                "--recipe", "b", str(runs["b", 0]), str(runs["b", 1]),
                "--recipe", "ab", *map(str, runs.values()),
                "--data", str(root), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cv.json").read_text())
    # Recompute recipe a by hand: each fold's network on its own val pictures.
    hits = n = 0
    for i in range(2):
        model, ckpt = load_checkpoint(runs["a", i])
        probs, targets = probabilities(model, ckpt, root, [64], ("val",))[64, "val"]
        hits += int((probs.argmax(1) == targets).sum())
        n += len(targets)
    a = result["scores"]["a"]
    assert a["n"] == n and a["accuracy"] == pytest.approx(hits / n)
    assert a["ci"][0] <= a["accuracy"] <= a["ci"][1]
    assert sum(c["n"] for c in a["per_class"].values()) == n
    pair = result["paired"]["a vs b"]
    assert pair["n"] == n
    assert pair["difference"] == pytest.approx(a["accuracy"] - result["scores"]["b"]["accuracy"])
    # each pair carries its 95% interval over pictures (stats.paired_difference)
    lo, hi = pair["ci95"]
    assert lo <= pair["difference"] <= hi and (lo < hi or pair["only_a"] + pair["only_b"] == 0)
    assert result["scores"]["ab"]["n"] == n  # two networks per fold: averaged, not counted twice
    assert "| a vs b |" in (tmp_path / "cv.md").read_text()
    # Step 4's recall floor, recomputed from the stored out-of-fold probabilities.
    floor = a["recall_floor"]["plain"]
    assert floor["class"] == a["lowest_recall_class"] and floor["recall_before"] == a["lowest_recall"]
    assert floor["accuracy_before"] == pytest.approx(a["accuracy"])
    stored = result["predictions"]["a"].values()
    logits = torch.tensor([p["probabilities"] for p in stored]).clamp_min(1e-12).log()
    targets = torch.tensor([p["target"] for p in stored])
    cls = result["classes"].index(floor["class"])
    logits[:, cls] += floor["offset"] or 0.0
    assert float((logits.argmax(1) == targets).float().mean()) == pytest.approx(floor["accuracy"], abs=1e-3)
    if floor["offset"] is not None:
        assert floor["recall"][floor["class"]] >= 0.9 > floor["recall_before"]
    assert "Recall floor (90%)" in (tmp_path / "cv.md").read_text()


def test_cv_with_views_scores_flipped_copies_of_the_same_pictures(fold_fits, tmp_path):
    root, runs = fold_fits
    assert cli(["cv", "--recipe", "a", str(runs["a", 0]), str(runs["a", 1]), "--data", str(root),
                "--views", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cv.json").read_text())
    assert result["views"] == 2 and result["floor"] == cv.RECALL_FLOOR
    # Fold 0's pictures by hand: the mean of the network's probabilities on each picture and its mirror.
    model, ckpt = load_checkpoint(runs["a", 0])
    plain = probabilities(model, ckpt, root, [64], ("val",))[64, "val"][0]
    mirrored = probabilities(FlipOnly(model), ckpt, root, [64], ("val",))[64, "val"][0]
    paths = [p for p, _ in data.split_of(data.read_manifest(ckpt["manifest"]), "val")]
    got = torch.tensor([result["predictions"]["a"][p]["probabilities"] for p in paths])
    assert torch.allclose(got, (plain + mirrored) / 2, atol=1e-4)
    with pytest.raises(SystemExit):  # argparse: 1, 2 or 4
        cli(["cv", "--recipe", "a", str(runs["a", 0]), "--data", str(root), "--views", "3"])


def test_cv_with_autocontrast_stretches_each_crop_and_pairs_with_plain(fold_fits, tmp_path, capsys):
    root, runs = fold_fits
    folds = [str(runs["a", 0]), str(runs["a", 1])]
    assert cli(["cv", "--recipe", "a", *folds, "--data", str(root), "--out", str(tmp_path / "plain")]) == 0
    assert cli(["cv", "--recipe", "a", *folds, "--data", str(root), "--autocontrast", "1",
                "--out", str(tmp_path / "ac")]) == 0
    result = json.loads((tmp_path / "ac" / "cv.json").read_text())
    assert result["autocontrast"] == 1.0
    model, ckpt = load_checkpoint(runs["a", 0])
    stretched = probabilities(model, ckpt, root, [64], ("val",), autocontrast=1.0)[64, "val"][0]
    paths = [p for p, _ in data.split_of(data.read_manifest(ckpt["manifest"]), "val")]
    got = torch.tensor([result["predictions"]["a"][p]["probabilities"] for p in paths])
    assert torch.allclose(got, stretched, atol=1e-4)
    plain = probabilities(model, ckpt, root, [64], ("val",))[64, "val"][0]
    assert not torch.allclose(plain, stretched, atol=1e-4)  # the step is applied, not only recorded
    capsys.readouterr()
    assert cli(["pair", str(tmp_path / "ac" / "cv.json"), str(tmp_path / "plain" / "cv.json")]) == 0
    pair = json.loads(capsys.readouterr().out)
    a, b = result["scores"]["a"]["accuracy"], json.loads((tmp_path / "plain" / "cv.json").read_text())
    assert pair["pictures"] == result["scores"]["a"]["n"]
    assert pair["difference"] == pytest.approx(a - b["scores"]["a"]["accuracy"])
    assert pair["ci95"][0] <= pair["difference"] <= pair["ci95"][1]


def test_export_oof_runs_each_fold_graph_as_served_on_its_own_held_out_pictures(fold_fits, fitted, tmp_path,
                                                                               capsys, caplog):
    from export.oof import get_args_parser, main

    root, runs = fold_fits
    folds = [str(runs["a", 0]), str(runs["a", 1])]
    args = get_args_parser().parse_args([*folds, "--data", str(root), "--out", str(tmp_path / "oof"), "--unfused",
                                         "--int8-weights", "7", "--bias-correction"])
    (tmp_path / "oof").mkdir()
    assert main(args) == 0
    result = json.loads((tmp_path / "oof" / "cv.json").read_text())
    assert set(result["predictions"]) == {"fp32", "int8-7bit", "int8-7bit-bc", "int8-7bit-unfused",
                                          "int8-7bit-bc-unfused"}
    # 7-bit weights cannot saturate the 16-bit sums, so the integer kernel computes what the
    # QDQ graph says, as the unfused run does in fp32
    fused, unfused = (result["predictions"][n] for n in ("int8-7bit", "int8-7bit-unfused"))
    gap = max(abs(a - b) for path in fused
              for a, b in zip(fused[path]["probabilities"], unfused[path]["probabilities"]))
    assert 0 < gap < 0.05
    assert cli(["cv", "--recipe", "a", *folds, "--data", str(root), "--out", str(tmp_path / "cv")]) == 0
    torch_cv = json.loads((tmp_path / "cv" / "cv.json").read_text())["predictions"]["a"]
    fp32 = result["predictions"]["fp32"]
    assert set(fp32) == set(torch_cv)  # every held-out picture once, by the network that never trained on it
    for path, p in torch_cv.items():
        assert fp32[path]["target"] == p["target"]
        assert fp32[path]["probabilities"] == pytest.approx(p["probabilities"], abs=1e-3)
    capsys.readouterr()
    assert cli(["pair", str(tmp_path / "oof" / "cv.json"), str(tmp_path / "oof" / "cv.json"),
                "--name-a", "int8-7bit-bc", "--name-b", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["pictures"] == len(fp32)
    run, _ = fitted  # trained on a plain split, not a fold: refused with one line
    args = get_args_parser().parse_args([str(run / "best.pt"), "--data", str(root), "--out", str(tmp_path / "x")])
    (tmp_path / "x").mkdir()
    with caplog.at_level(logging.ERROR):
        assert main(args) == 2
    assert "not trained on a fold manifest" in caplog.text


def test_suite_out_of_fold_pools_each_fold_network_on_its_own_pictures(fold_fits, tmp_path):
    root, runs = fold_fits
    assert cli(["robustness", str(runs["a", 0]), str(runs["a", 1]), "--data", str(root), "--split", "val",
                "--size", "64", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "robustness.json").read_text())
    held_out = sum(len(data.split_of(data.read_manifest(load_checkpoint(runs["a", i])[1]["manifest"]), "val"))
                   for i in range(2))
    assert result["clean"]["n"] == held_out and len(result["per_picture"]["corruptions"]) == held_out
    assert "pooled" in (tmp_path / "robustness.md").read_text()


def test_paired_difference_counts_a_picture_once_however_many_copies():
    a = [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]]
    b = [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    p = stats.paired_difference(a, b)
    d = [0.5, 0.0, 0.5]
    assert p["pictures"] == 3 and p["copies"] == 4 and p["difference"] == pytest.approx(1 / 3)
    half = 1.96 * math.sqrt(((0.5 - 1 / 3) ** 2 * 2 + (1 / 3) ** 2) / 3 / 3)
    assert p["ci95"] == pytest.approx([sum(d) / 3 - half, sum(d) / 3 + half])
    assert (p["only_a"], p["only_b"], p["mcnemar_p"]) == (4, 0, None)
    single = stats.paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
    assert single["mcnemar_p"] == stats.mcnemar(2, 0) and single["copies"] == 1
    with pytest.raises(ValueError, match="cannot pair"):
        stats.paired_difference(a, b[:2])


class FlipOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model(image.flip(-1))


def test_cv_refuses_networks_not_trained_on_folds_or_on_other_classes(fold_fits, fitted, tmp_path, caplog):
    root, runs = fold_fits
    run, _ = fitted
    with caplog.at_level(logging.ERROR):
        assert cli(["cv", "--recipe", "x", str(runs["a", 0]), str(run / "best.pt"), "--data", str(root)]) == 2
    assert "not trained on a fold manifest" in caplog.text
    other = torch.load(runs["a", 1], weights_only=False)
    other["classes"] = other["classes"][::-1]
    torch.save(other, tmp_path / "other.pt")
    with caplog.at_level(logging.ERROR):
        assert cli(["cv", "--recipe", "x", str(runs["a", 0]), str(tmp_path / "other.pt"), "--data", str(root)]) == 2
    assert "has classes" in caplog.text


def test_cv_with_a_fold_missing_scores_what_it_has(fold_fits, caplog):
    root, runs = fold_fits
    with caplog.at_level(logging.WARNING):
        result = cv.run([["a", str(runs["a", 0])]], root, None, None)
    assert "folds [1] missing" in caplog.text
    assert result["scores"]["a"]["folds"] == [0] and result["scores"]["a"]["k"] == 2
    val0 = data.split_of(data.read_manifest(load_checkpoint(runs["a", 0])[1]["manifest"]), "val")
    assert result["scores"]["a"]["n"] == len(val0)


def test_selective_scores_answer_only_what_the_target_allows():
    # 90 right answers with a wide margin, 10 wrong ones with a narrow margin
    targets = torch.arange(100) % 3
    logits = torch.zeros(100, 3)
    logits[torch.arange(90), targets[:90]] = 5.0
    logits[torch.arange(90, 100), (targets[90:] + 1) % 3] = 1.0
    sel = cv.selective_scores(logits, targets)
    assert sel["answered"] == 90 and sel["coverage"] == 0.9 and sel["accuracy"] == 1.0 and sel["met"]
    assert sel["ci"][0] < 1.0 and sel["at_90_coverage"]["accuracy"] == 1.0
    loose = cv.selective_scores(logits, targets, answered=0.9)
    assert loose["coverage"] == 1.0 and loose["accuracy"] == 0.9


def _fold_result(pictures: dict[str, tuple[int, int]], recipes: tuple[str, ...]) -> dict:
    """A cv.json of one fold: each picture {path: (target, called)} under every recipe."""
    def probs(called: int) -> list[float]:
        return [0.9 if c == called else 0.05 for c in range(3)]

    return {"size": 64, "classes": ["a", "b", "c"], "checkpoints": ["fold.pt"],
            "predictions": {r: {k: {"target": t, "probabilities": probs(c)} for k, (t, c) in pictures.items()}
                            for r in recipes}}


def test_pool_joins_folds_from_separate_runs_as_one_run_would(tmp_path):
    fold0 = _fold_result({f"a/{i}.jpg": (0, 0 if i < 8 else 1) for i in range(10)}, ("fp32", "int8"))
    fold1 = _fold_result({f"b/{i}.jpg": (1, 1 if i < 5 else 2) for i in range(10)}, ("fp32", "int8-unfused"))
    # the fused int8 graph of fold 1 was measured on a CPU whose kernel saturates: all wrong
    fold1["predictions"]["int8"] = {k: {**v, "probabilities": [0.05, 0.05, 0.9] if v["target"] == 1 else
                                        v["probabilities"]} for k, v in fold1["predictions"]["fp32"].items()}
    paths = []
    for i, result in enumerate((fold0, fold1)):
        paths.append(tmp_path / f"fold{i}.json")
        paths[-1].write_text(json.dumps(result))
    out = tmp_path / "pooled"
    assert cli(["pool", *map(str, paths), "--as", "int8-unfused=int8", "--out", str(out)]) == 0
    pooled = json.loads((out / "cv.json").read_text())
    assert set(pooled["predictions"]) == {"fp32", "int8"}
    for name in ("fp32", "int8"):  # 8 + 5 right of 20, the unfused graph standing for fold 1's int8
        assert pooled["scores"][name]["n"] == 20
        assert pooled["scores"][name]["accuracy"] == pytest.approx(13 / 20)
    assert pooled["paired"]["int8 vs fp32"]["difference"] == 0.0
    assert pooled["scores"]["fp32"]["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert "| int8 vs fp32 |" in (out / "cv.md").read_text()
    # without the rename fold 1's fused graph is what gets pooled, and it differs
    assert cli(["pool", *map(str, paths), "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "cv.json").read_text())
    assert plain["scores"]["int8"]["accuracy"] == pytest.approx(8 / 20)


def test_pool_refuses_a_picture_twice_and_a_bad_rename(tmp_path, caplog):
    fold = _fold_result({"a/0.jpg": (0, 0)}, ("fp32",))
    path = tmp_path / "fold.json"
    path.write_text(json.dumps(fold))
    with caplog.at_level(logging.ERROR):
        assert cli(["pool", str(path), str(path), "--out", str(tmp_path / "out")]) == 2
    assert "in two results" in caplog.text
    assert cli(["pool", str(path), "--as", "int8", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def _suite(path, corruptions, split="val"):
    hits = np.asarray(corruptions).tolist()
    path.write_text(json.dumps({"split": split, "clean": {"n": len(hits)}, "corruptions": {},
                                "per_picture": {"clean": [h[0] for h in hits], "corruptions": hits,
                                                "backgrounds": hits}}))
    return path


def test_pair_pools_the_suites_of_several_folds_as_one_set_of_pictures(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 2, (n, 3)) for n in (5, 7)]
    b = [rng.integers(0, 2, (n, 3)) for n in (5, 7)]
    paths = [[_suite(tmp_path / f"{side}{k}.json", hits[k]) for k in range(2)] for side, hits in (("a", a), ("b", b))]
    assert cli(["pair", str(paths[0][0]), str(paths[1][0]), "--also", str(paths[0][1]), str(paths[1][1]),
                "--part", "corruptions"]) == 0
    pooled = json.loads(capsys.readouterr().out)
    expected = stats.paired_difference(np.concatenate(a), np.concatenate(b))
    assert pooled["pictures"] == 12 and pooled["ci95"] == pytest.approx(expected["ci95"])
    assert pooled["difference"] == pytest.approx(expected["difference"])
    alone = pair.main(paths[0][0], paths[1][0], part="corruptions")
    assert alone["pictures"] == 5 and alone["difference"] != pytest.approx(expected["difference"])
    cv_json = tmp_path / "cv.json"
    cv_json.write_text(json.dumps({"predictions": {"x": {}}}))
    with pytest.raises(ValueError, match="not both"):
        pair.main(paths[0][0], paths[1][0], also=[(cv_json, cv_json)], part="corruptions")
