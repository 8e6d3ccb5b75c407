"""The shipped bundle: it loads, it is what it says, and its recorded numbers are real."""

import json
import subprocess
import sys

import numpy as np
import pytest

from server import create_app
from server.bundle import for_this_cpu, load_bundle
from tests.conftest import ROOT, SAMPLES, SHIPPED
from tests.helpers import at_least, fewest_right

CHOSEN_ON = ROOT / "docs" / "report" / "r21-e32" / "pooled" / "cv.json"
TRASHNET = ROOT.parent / "shared" / "data" / "trashnet" / "dataset-resized"
pytestmark = pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped bundle in models/")


def test_check_command_accepts_it():
    r = subprocess.run([sys.executable, "-m", "server", "check", str(SHIPPED)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok: ecosort"), r.stderr


def test_bundle_contract():
    bundle = load_bundle(SHIPPED)
    assert bundle.classes == ("cardboard", "glass", "metal", "paper", "plastic", "trash")
    assert bundle.input.name == "image" and bundle.input.shape[0] is None
    manifest = ROOT / bundle.provenance["split_manifest"]
    assert manifest.exists(), "the bundle must name a committed split manifest"
    items = json.loads(manifest.read_text())["items"]
    assert bundle.metrics["test"]["n"] == sum(it["split"] == "test" for it in items)
    assert bundle.provenance["commit"] and bundle.provenance["backbone"]
    for other in ROOT.glob("models/ecosort-*.json"):
        assert load_bundle(other).metrics["shipped"] == bundle.metrics["precision"]


def test_sample_photos():
    """The sample photos (test-split pictures, one a class) through the server: as many right
    as the bundle's recorded test accuracy makes near certain; a broken pipeline, at chance,
    would reach that about one time in a hundred."""
    bundle = for_this_cpu(load_bundle(SHIPPED))
    client = create_app({"model": SHIPPED}).test_client()
    right = 0
    for path in SAMPLES:
        body = client.post("/v1/classify", data=path.read_bytes(), content_type="image/jpeg").get_json()
        right += body["label"] == path.stem.rstrip("0123456789")
    floor = fewest_right(len(SAMPLES), bundle.metrics["test"]["accuracy"])
    assert at_least(floor, len(SAMPLES), 1 / len(bundle.classes)) < 0.01  # the floor tells a broken pipeline
    assert right >= floor


@pytest.mark.skipif(not TRASHNET.exists(), reason="TrashNet not beside the checkout")
def test_recorded_test_accuracy_is_reproduced():
    """Re-measure the test split through the server's exact path: the bundle's numbers hold."""
    from server.preprocess import decode, preprocess
    from server.runtime import Runtime

    bundle = for_this_cpu(load_bundle(SHIPPED))  # the graph this CPU serves, and its own numbers
    runtime = Runtime(bundle, threads=2)
    if bundle.metrics.get("measured_unfused"):
        # recorded on a CPU without VNNI as the graph's own arithmetic (export.int8): measured so again
        from export.__main__ import cpu_session

        runtime.session = cpu_session(bundle.onnx_path, fused=False)
    items = [it for it in json.loads((ROOT / bundle.provenance["split_manifest"]).read_text())["items"]
             if it["split"] == "test"]
    predictions = []
    for start in range(0, len(items), 32):
        batch = np.stack([preprocess(decode((TRASHNET / it["path"]).read_bytes(), 10**9, 1), bundle.preprocess)
                          for it in items[start:start + 32]])
        predictions += [bundle.classes[i] for i in runtime.probabilities(runtime.infer(batch)).argmax(1)]
    accuracy = np.mean([p == it["label"] for p, it in zip(predictions, items)])
    assert accuracy == pytest.approx(bundle.metrics["test"]["accuracy"], abs=1e-9)


def chosen_out_of_fold(bundle) -> tuple[dict, dict]:
    """The out-of-fold run a bundle's threshold was chosen on (docs/selection-rule.md, rounds
    16-17 and 22): the shipped recipe's three fold networks, each of their graphs as served, pooled."""
    cv = json.loads(CHOSEN_ON.read_text())
    if bundle.metrics["precision"] == "fp32":
        return cv, cv["scores"]["fp32"]["selective"]
    quant = bundle.metrics["quantization"]
    name = f"int8-{quant['weight_bits']}bit" + ("-bc" if quant["bias_corrected_convs"] else "")
    # a pooled file that scored the graph both ways names the one a VNNI CPU serves "-unfused"
    name = f"{name}-unfused" if f"{name}-unfused" in cv["scores"] else name
    return cv, cv["scores"][name]["selective"]


def test_threshold_is_the_one_chosen_out_of_fold():
    """docs/selection-rule.md, round 3: the shipped threshold is the recipe's out-of-fold one,
    for the shipped graph and for the one served where the CPU lacks what it needs."""
    shipped = load_bundle(SHIPPED)
    for bundle in (shipped, for_this_cpu(shipped, frozenset())):
        cv, chosen = chosen_out_of_fold(bundle)
        # chosen at the size it is served at: a network served larger is more confident
        assert (cv["size"] or bundle.provenance["trained_size"]) == bundle.preprocess.crop
        assert bundle.calibration.uncertain_below == bundle.metrics["selective"]["threshold"] == chosen["threshold"]
        # and under the temperature it was chosen with, or it cuts somewhere else
        assert bundle.calibration.temperature == chosen["temperature"]
        assert chosen["accuracy"] >= chosen["target_accuracy"] and chosen["answered"] > 1000


def test_frames_with_no_object_are_not_sure():
    """A few of the suite's no-object frames through the server (docs/model-card.md has them all)."""
    import io

    from training.robustness import no_object_frames

    client = create_app({"model": SHIPPED}).test_client()
    for kind in ("black", "over_exposed", "empty_wood", "hand"):
        for frame in no_object_frames(kind, 2, (298, 224), seed=1):
            buffer = io.BytesIO()
            frame.save(buffer, "PNG")
            body = client.post("/v1/classify", data=buffer.getvalue(), content_type="image/png").get_json()
            assert body["uncertain"], (kind, body["label"], body["confidence"])


def test_readme_example_is_the_shipped_bundles_answer():
    """The README's `POST /v1/classify` example names the shipped bundle and gives its answer."""
    import re

    readme = (ROOT / "README.md").read_text()
    example = readme.split("`POST /v1/classify` answers", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    named = re.search(r'"sha256": "([0-9a-f]{64})"', example).group(1)
    # a real answer: of the shipped graph, or of the one it names for a CPU that lacks what it needs
    shipped = load_bundle(SHIPPED)
    assert named in {shipped.sha256, for_this_cpu(shipped, frozenset()).sha256}
    photo = TRASHNET / re.search(r"dataset-resized/(\S+\.jpg)", readme).group(1)
    if not photo.exists():
        pytest.skip("TrashNet not beside the checkout")
    body = create_app({"model": SHIPPED}).test_client().post(
        "/v1/classify", data=photo.read_bytes(), content_type="image/jpeg").get_json()
    assert f'"label": "{body["label"]}"' in example
    if body["model"]["sha256"] != named:
        # This CPU serves the other graph of the same network: same label, other digits.
        assert body["model"]["sha256"] == for_this_cpu(shipped).sha256
        return
    assert f'"confidence": {body["confidence"]}' in example
    assert f'"uncertain": {str(body["uncertain"]).lower()}' in example
