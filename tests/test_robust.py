"""The robustness machinery: surfaces, corruptions, the suite, outlier exposure, the
'not sure' threshold, WiSE-FT, recipes and feedback in the manifest."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tests.conftest import SAMPLES, fit
from training import backgrounds, data, presets, recipes, robustness, selective, wise
from training.checkpoint import load_checkpoint
from training.losses import OutlierExposureLoss


def test_suite_surfaces_are_not_training_surfaces():
    assert set(backgrounds.SUITE).isdisjoint(backgrounds.TRAINING)
    assert set(backgrounds.SUITE_PHOTOS).isdisjoint(backgrounds.TRAINING_PHOTOS)
    rng = np.random.default_rng(0)
    for make in [*backgrounds.SUITE.values(), *backgrounds.NO_OBJECT.values()]:
        frame = make(48, 64, rng)
        assert frame.shape == (48, 64, 3) and 0 <= frame.min() and frame.max() <= 1


@pytest.mark.parametrize("name", robustness.CORRUPTIONS)
def test_corruptions_get_worse_with_severity(name):
    image = np.asarray(robustness.at_scale(Image.open(SAMPLES[0]).convert("RGB"), 96))
    rng = np.random.default_rng(0)
    change = [np.abs(robustness.corrupt(image, name, s, rng).astype(float) - image).mean() for s in (1, 5)]
    assert 0 < change[0] < change[1]


def test_camera_faults_keep_the_range_and_change_the_picture():
    torch.manual_seed(0)
    image = torch.from_numpy(np.asarray(Image.open(SAMPLES[0]).convert("RGB").resize((64, 48)))).permute(2, 0, 1) / 255
    faults = presets.CameraFaults(1.0, presets.CameraFaults.MORE)
    for fault in (faults.sensor, faults.defocus, faults.jpeg, faults.shake, faults.veil, faults.burn, faults):
        out = fault(image)
        assert out.shape == image.shape and 0 <= out.min() and out.max() <= 1
        assert (out - image).abs().mean() > 0.002, fault
    # a blur lowers the high frequencies; p=0 leaves the picture alone
    assert faults.defocus(image).diff(dim=2).abs().mean() < image.diff(dim=2).abs().mean()
    assert faults.shake(image).diff(dim=2).abs().mean() < image.diff(dim=2).abs().mean()
    assert faults.veil(image).std() < image.std() and faults.burn(image).mean() > image.mean()
    with pytest.raises(ValueError, match="camera faults take"):
        presets.CameraFaults(1.0, ("sensor", "fog"))
    assert torch.equal(presets.CameraFaults(0.0)(image), image)
    assert any(isinstance(t, presets.CameraFaults) for t in presets.train_preset(32, [0.5] * 3, [0.2] * 3).transforms)


def test_augmix_replaces_trivial_augment_without_the_suites_corruptions():
    augmix = presets.train_preset(32, [0.5] * 3, [0.2] * 3, augmix=True)
    policies = [t for t in augmix.transforms if isinstance(t, (T.AugMix, T.TrivialAugmentWide))]
    assert len(policies) == 1 and isinstance(policies[0], T.AugMix) and not policies[0].all_ops
    image = Image.open(SAMPLES[0]).convert("RGB")
    torch.manual_seed(0)
    assert augmix(image).shape == (3, 32, 32)
    assert presets.augment_policy(False, False) is None
    with pytest.raises(ValueError, match="choose one"):
        presets.train_preset(32, [0.5] * 3, [0.2] * 3, trivial_augment=True, augmix=True)


def test_background_swap_replaces_the_white_table_only():
    image = Image.new("RGB", (80, 60), (240, 240, 240))
    image.paste((200, 30, 30), (30, 20, 50, 40))
    out, share = robustness.swap_background(image, "wood", np.random.default_rng(0))
    out = np.asarray(out)
    assert 0.8 < share < 0.95
    assert tuple(out[30, 40]) == (200, 30, 30)  # the object stays
    assert np.abs(out[2, 2].astype(int) - 240).max() > 30  # the table is gone


def test_suite_scores_a_predictor_that_only_sees_colour():
    # "Red means class 0": right on the clean red pictures, and not sure on a grey frame.
    images = [Image.new("RGB", (64, 48), (220, 20, 20)) for _ in range(4)]

    def predict(batch):
        red = np.array([np.asarray(im, float)[..., 0].mean() / 255 for im in batch])
        p0 = np.clip(red, 0.34, 1)
        return np.stack([p0, (1 - p0) / 2, (1 - p0) / 2], 1)

    result = robustness.run_suite(predict, images, np.zeros(4, int), 48, 0.5, corruptions=("contrast",),
                                  no_object_per_kind=2)
    assert result["clean"]["accuracy"] == 1
    assert result["summary"]["no_object_uncertain"]["n"] == 2 * len(backgrounds.NO_OBJECT)
    assert result["no_object"]["empty_grass"]["uncertain"] == 1  # grass is not red
    assert result["no_object"]["over_exposed"]["uncertain"] == 0  # white is red enough: a real miss
    # Per picture, so two suites on the same pictures pair: 5 contrast severities, 8 surfaces.
    per = result["per_picture"]
    assert np.array(per["corruptions"]).shape == (4, 5) and np.array(per["backgrounds"]).shape == (4, 8)
    assert np.array(per["clean"]).shape == (4, 1) and np.array(per["clean"]).all()
    assert np.mean(per["corruptions"]) == pytest.approx(result["summary"]["corruption_mean"]["accuracy"])


def test_suites_of_two_folds_pool_into_one():
    def predict(batch):
        red = np.array([np.asarray(im, float)[..., 0].mean() / 255 for im in batch])
        p0 = np.clip(red, 0.34, 1)
        return np.stack([p0, (1 - p0) / 2, (1 - p0) / 2], 1)

    red = [Image.new("RGB", (64, 48), (220, 20, 20)) for _ in range(3)]
    grey = [Image.new("RGB", (64, 48), (120, 120, 120)) for _ in range(2)]
    # the grey pictures are labelled class 1: wrong on every clean copy
    runs = [robustness.run_suite(predict, images, np.full(len(images), label), 48, 0.5, corruptions=("contrast",),
                                 no_object_per_kind=2) for images, label in ((red, 0), (grey, 1))]
    pooled = robustness.pool(runs)
    assert pooled["clean"]["n"] == 5 and pooled["clean"]["accuracy"] == pytest.approx(3 / 5)
    per = np.array(pooled["per_picture"]["corruptions"])
    assert per.shape == (5, 5)
    assert pooled["summary"]["corruption_mean"]["accuracy"] == pytest.approx(per.mean())
    for j, entry in enumerate(pooled["corruptions"]["contrast"]["severities"]):
        assert entry["n"] == 5 and entry["accuracy"] == pytest.approx(per[:, j].mean())
    assert pooled["backgrounds"]["wood"]["n"] == 5
    assert pooled["summary"]["no_object_uncertain"]["n"] == 4 * len(backgrounds.NO_OBJECT)


def test_outlier_exposure_pushes_no_object_frames_to_uniform():
    loss = OutlierExposureLoss(torch.nn.CrossEntropyLoss(), weight=1.0)
    targets = torch.tensor([0, -1])
    confident = torch.tensor([[5.0, 0, 0], [5.0, 0, 0]])
    flat = torch.tensor([[5.0, 0, 0], [0.0, 0, 0]])
    assert loss(flat, targets) < loss(confident, targets)
    only_frames = loss(torch.zeros(2, 3, requires_grad=True), torch.tensor([-1, -1]))
    assert torch.isclose(only_frames, torch.log(torch.tensor(3.0)))


def test_threshold_is_the_lowest_that_keeps_answers_right():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 0])
    chosen = selective.choose_threshold(conf, correct, 0.98)
    assert chosen["threshold"] == 0.9 and chosen["coverage"] == 0.5 and chosen["met"]
    assert selective.choose_threshold(conf, correct, 0.75)["threshold"] == 0.7
    # a miss among the most confident few does not stop the search further down the curve
    dip = selective.choose_threshold(np.array([0.99, 0.98, 0.97, 0.9, 0.8, 0.7]), np.array([0, 1, 1, 1, 1, 0]),
                                     0.75)
    assert dip["threshold"] == 0.8 and dip["coverage"] == 5 / 6
    never = selective.choose_threshold(np.array([0.9, 0.8]), np.array([0, 1]), 0.98)
    assert not never["met"]
    rows = selective.risk_coverage(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1]))
    assert [r["coverage"] for r in rows] == [2 / 3, 1.0]


def test_stored_predictions_answered_at_a_bundles_calibration():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]])
    targets = np.array([0, 1, 2, 1])
    everything = selective.score_at(probabilities, targets, 1.0, 0.0)
    assert everything["coverage"] == 1.0 and everything["accuracy"] == 0.75
    # temperature 1 leaves the probabilities as they are: 0.7 and 0.8 reach 0.6, 0.5 does not
    assert selective.score_at(probabilities, targets, 1.0, 0.6)["answered"] == 2
    # a temperature under 1 sharpens: 0.5 over 0.3 and 0.2 becomes 25 / 38 >= 0.6, while
    # 0.5 over 0.4 becomes 25 / 42 < 0.6 and the one wrong answer stays 'not sure'
    sharp = selective.score_at(probabilities, targets, 0.5, 0.6)
    assert sharp["answered"] == 3 and sharp["accuracy"] == 1.0


@pytest.mark.parametrize("name", sorted(p.stem for p in recipes.HERE.glob("*.toml")))
def test_recipes_are_fit_defaults(name):
    recipe = recipes.load(name)
    from training.train import get_args_parser

    names = {a.dest for a in get_args_parser()._actions}
    assert set(recipe) <= names, set(recipe) - names
    with pytest.raises(FileNotFoundError, match="robust-lite0"):
        recipes.load("no-such-recipe")


def test_probe_oe_and_wise_fit(dataset, tmp_path):
    run = tmp_path / "run"
    fit(dataset, run, "--probe", "--no-object-share", "0.5", "--trivial-augment", "--background-p", "0.9",
        "--max-steps", "2")
    probe, tuned = (torch.load(run / f, weights_only=False) for f in ("probe.pt", "best.pt"))
    assert probe["epoch"] == -1 and probe["manifest"] == tuned["manifest"]
    key = next(k for k, v in tuned["model"].items() if v.is_floating_point() and not torch.equal(v, probe["model"][k]))
    half = wise.interpolate(probe, tuned, 0.5)["model"][key]
    assert torch.allclose(half, (probe["model"][key] + tuned["model"][key]) / 2)
    out = wise.main(run / "probe.pt", run / "best.pt", 1.0, tmp_path / "wise.pt")
    model, ckpt = load_checkpoint(out)
    assert ckpt["wise_alpha"] == 1.0 and torch.equal(model.state_dict()[key], tuned["model"][key])
    with pytest.raises(ValueError):
        wise.interpolate(probe, tuned, 1.5)
    own, _, own_threshold = robustness.checkpoint_predictor(out)
    sharp, _, threshold = robustness.checkpoint_predictor(out, temperature=0.5, uncertain_below=0.8)
    assert (own_threshold, threshold) == (0.5, 0.8)
    plain = own([Image.open(SAMPLES[0])]).astype(np.float64)
    np.testing.assert_allclose(sharp([Image.open(SAMPLES[0])])[0], plain[0] ** 2 / (plain[0] ** 2).sum(), rtol=1e-4)


def test_feedback_joins_the_manifest_and_never_moves(dataset, tmp_path):
    manifest = data.make_manifest(dataset)
    feedback = tmp_path / "feedback"
    (feedback / "cardboard").mkdir(parents=True)
    (feedback / "glass").mkdir()
    shutil.copy(SAMPLES[0], feedback / "cardboard" / "a.jpg")
    shutil.copy(SAMPLES[1], feedback / "glass" / "b.jpg")
    (feedback / "glass" / ".c.tmp").write_bytes(b"half a write")
    grown, added = data.extend_with_feedback(manifest, feedback, dataset)
    assert added == 2 and len(grown["items"]) == len(manifest["items"]) + 2
    assert grown["items"][: len(manifest["items"])] == manifest["items"]
    placed = {it["path"]: it["split"] for it in grown["items"]}
    shutil.copy(SAMPLES[2], feedback / "cardboard" / "d.jpg")
    again, added = data.extend_with_feedback(grown, feedback, dataset)
    assert added == 1 and all(placed[it["path"]] == it["split"] for it in again["items"] if it["path"] in placed)
    assert data.extend_with_feedback(again, feedback, dataset)[1] == 0
    reader = data.ImageList(dataset, data.split_of(again, "train") + data.split_of(again, "val")
                            + data.split_of(again, "test"), feedback=feedback)
    assert all(reader.path(rel).is_file() for rel, _ in reader.samples)


def test_fit_trains_on_feedback_and_grows_the_manifest(dataset, tmp_path):
    manifest = tmp_path / "split.json"
    data.write_manifest(data.make_manifest(dataset), manifest)
    feedback = tmp_path / "feedback"
    (feedback / "metal").mkdir(parents=True)
    for i, sample in enumerate(SAMPLES[:3]):
        shutil.copy(sample, feedback / "metal" / f"{i}.jpg")
    fit(dataset, tmp_path / "run", "--manifest", str(manifest), "--feedback", str(feedback), "--max-steps", "1")
    grown = json.loads(manifest.read_text())
    assert sum(it["path"].startswith(data.FEEDBACK) for it in grown["items"]) == 3


def test_soft_targets_mix_teacher_and_label():
    class Pictures:
        samples = [("a.jpg", 1), ("b.jpg", 0), ("frame", -1)]

        def __getitem__(self, i):
            return "image", self.samples[i][1]

        def __len__(self):
            return 3

    teacher = {"a.jpg": np.log(np.array([0.5, 0.25, 0.25], np.float32))}
    soft = data.SoftTargets(Pictures(), teacher, 3, alpha=0.6)
    assert torch.allclose(soft[0][1], torch.tensor([0.3, 0.55, 0.15]))
    assert torch.equal(soft[1][1], torch.tensor([1.0, 0.0, 0.0]))  # the teacher never saw it
    assert torch.equal(soft[2][1], torch.zeros(3))  # no object
    sharp = data.SoftTargets(Pictures(), teacher, 3, alpha=1.0, temperature=0.5)
    assert sharp[0][1][0] > 0.6


def test_outlier_exposure_reads_soft_targets_as_hard_ones():
    logits = torch.randn(4, 3)
    hard = torch.tensor([2, -1, 0, -1])
    as_soft = torch.zeros(4, 3)
    as_soft[0, 2] = as_soft[2, 0] = 1.0
    loss = OutlierExposureLoss(torch.nn.CrossEntropyLoss(), 0.5)
    assert torch.allclose(loss(logits, hard), loss(logits, as_soft))
    from training.engine import hard_labels

    assert torch.equal(hard_labels(as_soft), hard)


def test_autocontrast_in_training_stretches_every_picture_and_travels_with_the_checkpoint(dataset, tmp_path):
    from export.__main__ import load_members

    dim = Image.fromarray((np.asarray(Image.open(SAMPLES[0]).convert("RGB").resize((64, 48))) * 0.3).astype(np.uint8))
    torch.manual_seed(0)
    plain, stretched = (presets.train_preset(32, [0.5] * 3, [0.5] * 3, 0.0, autocontrast=a)(dim) for a in (None, 1.0))
    assert stretched.max() - stretched.min() > 1.8 > plain.max() - plain.min()
    frame = Image.new("RGB", (32, 32), (60, 60, 60))
    frame.paste((70, 70, 70), (0, 0, 16, 32))
    assert presets.no_object_preset(32, [0.5] * 3, [0.5] * 3, 1.0)(frame).std() > 0.5
    fit(dataset, tmp_path, "--autocontrast", "1", "--max-steps", "1")
    _, (ckpt,), spec = load_members([tmp_path / "best.pt"], None)
    assert ckpt["preprocess"]["autocontrast"] == 1.0 and spec.autocontrast == 1.0


def test_mixup_blends_labelled_pictures_only_and_targets_follow():
    from training.mixing import BatchMix

    torch.manual_seed(0)
    images, targets = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, -1, 3, 4])
    mixed, soft = BatchMix(6, mixup=0.4)(images, targets)
    assert torch.equal(mixed[2], images[2]) and torch.equal(soft[2], torch.zeros(6))
    known = [0, 1, 3, 4]
    assert torch.allclose(soft[known].sum(1), torch.ones(4))
    # torchvision pairs each labelled picture with the one before it (a roll): the picture
    # and its target take the same share
    lam = float(soft[0, 0])
    assert 0 < lam < 1 and soft[0, 4] == pytest.approx(1 - lam, abs=1e-6)
    assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[4], atol=1e-6)
    assert torch.allclose(mixed[3], lam * images[3] + (1 - lam) * images[1], atol=1e-6)
    assert not torch.equal(mixed, images)


def test_cutmix_pastes_a_box_and_mixing_refuses_what_it_cannot_mix():
    from training.mixing import BatchMix

    torch.manual_seed(1)
    images, targets = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    mixed, soft = BatchMix(4, cutmix=1.0)(images, targets)
    # every pixel comes from the picture itself or the one before it, in the target's shares
    own = (mixed[1] == images[1]).all(0).float().mean()
    assert ((mixed[1] == images[1]) | (mixed[1] == images[0])).all()
    assert soft[1, 1] == pytest.approx(float(own), abs=1e-6)
    one, lone = BatchMix(4, mixup=1.0)(images[:2], torch.tensor([2, -1]))
    assert torch.equal(one, images[:2]) and lone.tolist()[0] == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="soft"):
        BatchMix(4, mixup=1.0)(images, torch.eye(4))
    with pytest.raises(ValueError):
        BatchMix(4)


def test_fit_with_mixup_cutmix_and_no_object_frames(dataset, tmp_path):
    fit(dataset, tmp_path / "m", "--mixup", "0.2", "--cutmix", "1.0", "--no-object-share", "0.5",
        "--max-steps", "2", "--no-report")
    assert (tmp_path / "m" / "best.pt").exists()
    with pytest.raises(ValueError, match="teacher"):
        fit(dataset, tmp_path / "t", "--mixup", "0.2", "--teacher", str(tmp_path / "teacher.json"))
