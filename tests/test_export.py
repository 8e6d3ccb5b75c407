"""Checkpoint to bundle: parity with PyTorch, int8, and the bundle serves."""

import json
import logging

import numpy as np
import onnx
import pytest
import torch

from export.__main__ import get_args_parser, main
from server import create_app
from server.bundle import load_bundle
from tests.conftest import SAMPLES, fit


def export(checkpoint, out, *extra):
    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    return main(get_args_parser().parse_args([*map(str, checkpoints), "--out", str(out), "--limit", "12",
                                              "--calibration-images", "8", *extra]))


@pytest.fixture(scope="module")
def lite_bundle(fitted, tmp_path_factory):
    run, _ = fitted
    out = tmp_path_factory.mktemp("models") / "lite"
    assert export(run / "best.pt", out, "--report", str(out.parent / "report")) == 0
    return out


def graph_of(lite_bundle, precision: str):
    """The ONNX graph of the bundle beside `lite_bundle` built at this precision."""
    bundle = next(p for p in lite_bundle.parent.glob("*.json") if load_bundle(p).metrics["precision"] == precision)
    return bundle.with_suffix(".onnx")


def test_lite0_bundle_files_and_parity(lite_bundle):
    folder = lite_bundle.parent
    names = sorted(p.name for p in folder.iterdir())
    shipped = load_bundle(folder / "lite.json")
    report = folder / "report"
    assert sorted(p.name for p in report.iterdir()) == ["confusion.json", "confusion.png", "metrics.json",
                                                         "summary.md"]
    assert json.loads((report / "metrics.json").read_text())["test"] == shipped.metrics["test"]
    other = "lite-fp32" if shipped.metrics["precision"] == "int8" else "lite-int8"
    assert names == sorted(["lite.json", "lite.onnx", f"{other}.json", f"{other}.onnx", "report"])
    fp32 = shipped if shipped.metrics["precision"] == "fp32" else load_bundle(folder / f"{other}.json")
    parity = fp32.metrics["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["argmax_equal"] and parity["images"] > 0
    assert shipped.input.name == "image" and shipped.input.shape == (None, 3, 64, 64)
    assert shipped.classes == ("cardboard", "glass", "metal")
    assert shipped.preprocess.mean == (0.5, 0.5, 0.5)
    assert shipped.provenance["backbone"] == "efficientnet_lite0" and shipped.provenance["split_manifest"]
    assert set(shipped.metrics["variants"]) == {"fp32", "int8"}


def test_onnx_graph_is_static_and_checked(lite_bundle):
    model = onnx.load(str(graph_of(lite_bundle, "fp32")))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "Shape" not in ops, "dynamic 'same' padding left in the graph"
    assert "Pad" not in ops and "Conv" in ops, "the strided convolutions' pads are not folded into them"
    assert model.opset_import[0].version >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].name == "logits"


def test_int8_is_quantized(lite_bundle):
    int8 = graph_of(lite_bundle, "int8")
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Pad" not in ops
    quant = json.loads(int8.with_suffix(".json").read_text())["metrics"]["quantization"]
    assert quant["format"] == "QDQ" and quant["per_channel"] is True
    # 8-bit weights saturate on a CPU without VNNI: the bundle names the fp32 graph for it
    needs = load_bundle(int8.with_suffix(".json")).requires
    fp32_json = graph_of(lite_bundle, "fp32").with_suffix(".json").name
    assert (needs is not None and needs.otherwise == fp32_json) == (quant["weight_bits"] == 8)


@pytest.mark.parametrize("variant", ["lite", "other"])
def test_bundles_serve(lite_bundle, variant):
    folder = lite_bundle.parent
    path = folder / "lite.json" if variant == "lite" else [p for p in folder.glob("lite-*.json")][0]
    client = create_app({"model": path, "ort_threads": 1}).test_client()
    r = client.post("/v1/classify", data=SAMPLES[0].read_bytes(), content_type="image/jpeg")
    assert r.status_code == 200 and r.get_json()["label"] in ("cardboard", "glass", "metal")


def test_resnet50_random_init_parity(dataset, tmp_path):
    fit(dataset, tmp_path / "run", "--backbone", "resnet50", "--no-pretrained", "--max-steps", "1")
    assert export(tmp_path / "run" / "best.pt", tmp_path / "m" / "r50", "--no-int8") == 0
    bundle = load_bundle(tmp_path / "m" / "r50.json")
    assert bundle.metrics["parity"]["max_abs_logit_diff"] <= 1e-4
    assert bundle.preprocess.mean == (0.485, 0.456, 0.406)


def test_parity_failure_exits_nonzero_and_says_by_how_much(fitted, tmp_path, caplog):
    run, _ = fitted
    with caplog.at_level(logging.ERROR, logger="export"):
        assert export(run / "best.pt", tmp_path / "x", "--no-int8", "--tolerance", "1e-12") == 1
    assert "parity FAILED" in caplog.text and "exceeds 1.0e-12 by" in caplog.text
    assert not (tmp_path / "x.json").exists()


def test_ensemble_is_one_graph_of_mean_probabilities(fitted, second_member, tmp_path):
    import numpy as np
    import onnxruntime as ort
    import torch

    from training.checkpoint import load_checkpoint

    run, _ = fitted
    assert export([run / "best.pt", second_member], tmp_path / "ens", "--no-int8", "--image-size", "72") == 0
    bundle = load_bundle(tmp_path / "ens.json")
    assert bundle.input.shape == (None, 3, 72, 72) and (bundle.preprocess.resize, bundle.preprocess.crop) == (72, 72)
    assert [m["backbone"] for m in bundle.provenance["members"]] == ["efficientnet_lite0"] * 2
    assert bundle.metrics["parity"]["max_abs_logit_diff"] <= 1e-4
    image = np.random.default_rng(0).normal(size=(3, 3, 72, 72)).astype(np.float32)
    with torch.no_grad():
        members = [load_checkpoint(p)[0] for p in (run / "best.pt", second_member)]
        probs = torch.stack([m(torch.from_numpy(image)).softmax(1) for m in members]).numpy()
    logits = ort.InferenceSession(str(bundle.onnx_path)).run(None, {"image": image})[0]
    got = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.abs(got - probs.mean(0)).max() < 1e-5
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # two different members, or the test proves nothing


def test_views_are_flips_inside_the_graph(fitted, second_member, tmp_path):
    import numpy as np
    import onnxruntime as ort

    from training.checkpoint import load_checkpoint

    run, _ = fitted
    members = [run / "best.pt", second_member]
    last = load_checkpoint(members[0])[1]["classes"][-1]
    assert export(members, tmp_path / "views", "--views", "4", "--image-size", "72",
                  "--class-offset", f"{last}=0.5") == 0
    bundle = load_bundle(tmp_path / "views.json")
    assert bundle.provenance["views"] == 4 and bundle.metrics["parity"]["max_abs_logit_diff"] <= 1e-4
    assert bundle.metrics["logit_adjustment"]["class_offset"] == {last: 0.5}
    image = np.random.default_rng(1).normal(size=(3, 3, 72, 72)).astype(np.float32)
    x = torch.from_numpy(image)
    with torch.no_grad():  # the mean over 2 networks x 4 flips, batch of 3 (the batch axis stays dynamic)
        nets = [load_checkpoint(p)[0] for p in members]
        probs = torch.stack([n(v).softmax(1) for n in nets
                             for v in (x, x.flip(-1), x.flip(-2), x.flip(-2, -1))]).mean(0).numpy()
    fp32 = tmp_path / "views-fp32.onnx"  # int8 ships or not; the fp32 graph is the exact one
    onnx_path = fp32 if fp32.exists() else bundle.onnx_path
    logits = ort.InferenceSession(str(onnx_path)).run(None, {"image": image})[0]
    got = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.abs(got - probs).max() < 1e-5
    client = create_app({"model": tmp_path / "views.json", "ort_threads": 1}).test_client()
    answer = client.post("/v1/classify", data=SAMPLES[0].read_bytes(), content_type="image/jpeg")
    assert answer.status_code == 200 and answer.get_json()["label"] in bundle.classes


@pytest.mark.parametrize("change", ["classes", "mean", "ratio"])
def test_ensemble_of_networks_that_disagree_is_refused(fitted, tmp_path, caplog, change):
    import torch

    run, _ = fitted
    other = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    if change == "classes":
        other["classes"] = list(reversed(other["classes"]))
    elif change == "mean":
        other["preprocess"]["mean"] = [0.485, 0.456, 0.406]
    else:  # trained at another size is fine, another resize/crop ratio is not
        other["preprocess"].update(resize=int(other["preprocess"]["crop"] * 1.5))
    torch.save(other, tmp_path / "other.pt")
    with caplog.at_level(logging.ERROR, logger="export"):
        assert export([run / "best.pt", tmp_path / "other.pt"], tmp_path / "x", "--no-int8") == 2
    assert "not one ensemble" in caplog.text and not (tmp_path / "x.json").exists()


def test_a_manifest_without_test_pictures_is_refused_with_a_hint(fitted, tmp_path, caplog):
    run, _ = fitted
    manifest = json.loads((run / "split.json").read_text())
    manifest["items"] = [it for it in manifest["items"] if it["split"] != "test"]  # as a fold manifest
    (tmp_path / "fold.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.ERROR, logger="export"):
        assert export(run / "best.pt", tmp_path / "x", "--no-int8", "--manifest", str(tmp_path / "fold.json")) == 2
    assert "has no test pictures" in caplog.text and "--manifest" in caplog.text
    assert not (tmp_path / "x.json").exists()


def test_logit_adjustment_is_fitted_on_val_and_served(fitted, dataset, tmp_path):
    import numpy as np

    from export.__main__ import load_arrays
    from server.runtime import Runtime
    from training.calibration import prior_offsets
    from training.data import read_manifest, split_of

    run, _ = fitted
    assert export(run / "best.pt", tmp_path / "adj", "--no-int8", "--logit-adjustment", "fit") == 0
    bundle = load_bundle(tmp_path / "adj.json")
    adjustment = bundle.metrics["logit_adjustment"]
    manifest = read_manifest(run / "split.json")
    labels = [label for _, label in split_of(manifest, "train")]
    assert adjustment["train_counts"] == [labels.count(i) for i in range(len(bundle.classes))]
    assert set(adjustment["unadjusted"]) == {"val", "test"}
    expected = prior_offsets(adjustment["train_counts"], adjustment["tau"]).tolist()
    assert adjustment["offsets"] == pytest.approx(expected)
    assert (bundle.calibration.logit_offsets is None) == (adjustment["tau"] == 0)
    # What the bundle records for val is what the server computes with its calibration.
    val = split_of(manifest, "val")[:12]
    images, targets = load_arrays(dataset, val, bundle.preprocess)
    runtime = Runtime(bundle, threads=1)
    predicted = runtime.probabilities(runtime.infer(images)).argmax(1)
    assert np.mean(predicted == targets) == pytest.approx(bundle.metrics["val"]["accuracy"])


def test_logit_tau_given_is_used_as_is(fitted, tmp_path, caplog):
    from training.calibration import prior_offsets

    run, _ = fitted
    assert export(run / "best.pt", tmp_path / "tau", "--no-int8", "--logit-tau", "0.7") == 0
    bundle = load_bundle(tmp_path / "tau.json")
    adjustment = bundle.metrics["logit_adjustment"]
    assert adjustment["tau"] == 0.7 and adjustment["tau_from"] == "given"
    assert bundle.calibration.logit_offsets == pytest.approx(prior_offsets(adjustment["train_counts"], 0.7).tolist())
    with caplog.at_level(logging.ERROR, logger="export"):
        assert export(run / "best.pt", tmp_path / "both", "--no-int8", "--logit-tau", "0.7",
                      "--logit-adjustment", "fit") == 2
        assert export(run / "best.pt", tmp_path / "neg", "--no-int8", "--logit-tau", "-1") == 2
    assert "--logit-tau takes a tau" in caplog.text and not (tmp_path / "neg.json").exists()


def test_threshold_and_temperature_given_are_served_together(fitted, tmp_path, caplog):
    """A threshold chosen out of fold ships with the temperature it was chosen under."""
    run, _ = fitted
    assert export(run / "best.pt", tmp_path / "given", "--no-int8", "--uncertain-below", "0.7",
                  "--temperature", "1.3") == 0
    bundle = load_bundle(tmp_path / "given.json")
    assert bundle.calibration.temperature == 1.3 and bundle.calibration.uncertain_below == 0.7
    assert bundle.metrics["temperature_from"] == "given" and bundle.metrics["selective"]["chosen_on_val"] is None
    assert export(run / "best.pt", tmp_path / "fitted", "--no-int8") == 0
    assert load_bundle(tmp_path / "fitted.json").metrics["temperature_from"] == "val"
    with caplog.at_level(logging.ERROR, logger="export"):
        assert export(run / "best.pt", tmp_path / "zero", "--no-int8", "--temperature", "0") == 2
    assert "--temperature takes" in caplog.text and not (tmp_path / "zero.json").exists()


def test_class_offset_adds_to_one_class_after_the_tau(fitted, tmp_path, caplog):
    from training.calibration import prior_offsets

    run, _ = fitted
    classes = torch.load(run / "best.pt", weights_only=False)["classes"]
    last = classes[-1]
    assert export(run / "best.pt", tmp_path / "floor", "--no-int8", "--logit-tau", "0.7",
                  "--class-offset", f"{last}=0.5") == 0
    bundle = load_bundle(tmp_path / "floor.json")
    adjustment = bundle.metrics["logit_adjustment"]
    assert adjustment["class_offset"] == {last: 0.5}
    expected = prior_offsets(adjustment["train_counts"], 0.7)
    expected[-1] += 0.5
    assert bundle.calibration.logit_offsets == pytest.approx(expected.tolist())
    # Alone, without a tau, it is the only offset the server adds.
    assert export(run / "best.pt", tmp_path / "alone", "--no-int8", "--class-offset", f"{last}=0.5") == 0
    alone = load_bundle(tmp_path / "alone.json")
    assert alone.calibration.logit_offsets == pytest.approx([0.0] * (len(classes) - 1) + [0.5])
    with caplog.at_level(logging.ERROR, logger="export"):
        for bad in ("nope=0.5", f"{last}=-1", f"{last}=x", last):
            assert export(run / "best.pt", tmp_path / "bad", "--no-int8", "--class-offset", bad) == 2
    assert "--class-offset takes CLASS=B" in caplog.text and not (tmp_path / "bad.json").exists()


def test_teacher_outputs_feed_a_distilled_fit(lite_bundle, fitted, dataset, tmp_path):
    from export import teacher
    from server.preprocess import preprocess
    from server.runtime import Runtime
    from training import data

    run, _ = fitted
    out = tmp_path / "teacher.npz"
    args = teacher.get_args_parser().parse_args([str(lite_bundle.with_suffix(".json")), "--data", str(dataset),
                                                 "--manifest", str(run / "split.json"), "--out", str(out)])
    assert teacher.main(args) == 0
    train = data.split_of(data.read_manifest(run / "split.json"), "train")
    bundle = load_bundle(lite_bundle.with_suffix(".json"))
    kept = data.read_teacher(out, list(bundle.classes))
    assert sorted(kept) == sorted(p for p, _ in train)
    path = train[0][0]
    image = data.open_rgb(dataset / path)
    direct = Runtime(bundle, 1).infer(preprocess(image, bundle.preprocess)[None])[0]
    assert torch.allclose(torch.as_tensor(kept[path]), torch.as_tensor(direct), atol=1e-4)
    with pytest.raises(data.DatasetError, match="teacher for"):
        data.read_teacher(out, list(reversed(bundle.classes)))

    result = fit(dataset, tmp_path / "kd", "--manifest", str(run / "split.json"), "--teacher", str(out),
                 "--distill-alpha", "0.5", "--no-object-share", "0.5", "--max-steps", "2", "--no-report")
    ckpt = torch.load(tmp_path / "kd" / "best.pt", weights_only=False)
    assert result["val"]["acc"] >= 0 and ckpt["args"]["teacher"] == str(out)


def test_bias_correction_takes_the_mean_shift_of_rounded_weights_off_the_biases(lite_bundle, tmp_path):
    from export.__main__ import cpu_session, onnx_logits
    from export.biascorrect import correct_biases, dequantized_weights
    from export.quantize import quantize_int8

    fp32 = graph_of(lite_bundle, "fp32")
    calibration = np.random.default_rng(0).uniform(-1, 1, (32, 3, 64, 64)).astype(np.float32)
    plain = quantize_int8(fp32, tmp_path / "plain.onnx", calibration, weight_bits=7, widen_for_bias=False)
    fixed = quantize_int8(fp32, tmp_path / "fixed.onnx", calibration, weight_bits=7, bias_correction=True)
    assert plain["bias_corrected_convs"] == 0 and fixed["bias_corrected_convs"] > 10
    # the weights served are the same; only the biases moved
    for a, b in zip(dequantized_weights(tmp_path / "plain.onnx").values(),
                    dequantized_weights(tmp_path / "fixed.onnx").values()):
        assert np.array_equal(a, b)
    assert correct_biases(fp32, tmp_path / "plain.onnx", calibration,
                          tmp_path / "c.onnx") == fixed["bias_corrected_convs"]
    reference = onnx_logits(cpu_session(fp32), calibration)
    shift = [np.abs((onnx_logits(cpu_session(tmp_path / f"{n}.onnx"), calibration) - reference).mean(0)).mean()
             for n in ("plain", "fixed")]
    assert shift[1] < shift[0]


@pytest.mark.parametrize("bits", [7, 8])
def test_int8_from_an_fp32_bundle_names_its_fallback_at_8_bits(lite_bundle, fitted, dataset, tmp_path, bits,
                                                              monkeypatch):
    import export.int8
    from export.__main__ import cpu_session, load_arrays, onnx_logits
    from export.int8 import get_args_parser as int8_parser
    from export.int8 import main as int8_main
    from server.bundle import for_this_cpu
    from training.data import read_manifest, split_of

    monkeypatch.setattr(export.int8, "has_vnni", lambda: False)  # measured as a VNNI CPU computes it

    run, _ = fitted
    source = graph_of(lite_bundle, "fp32").with_suffix(".json")
    fp32 = load_bundle(source)
    out = tmp_path / "shop"
    extra = [] if bits == 8 else ["--no-int8-bias-correction"]  # bias correction is the default
    assert int8_main(int8_parser().parse_args([
        str(source), "--data", str(dataset), "--manifest", str(run / "split.json"), "--out", str(out),
        "--int8-weights", str(bits), "--limit", "12", "--calibration-images", "8", *extra])) == 0
    int8, copy = load_bundle(tmp_path / "shop.json"), load_bundle(tmp_path / "shop-fp32.json")
    assert int8.metrics["precision"] == "int8" and int8.metrics["quantization"]["weight_bits"] == bits
    assert (int8.metrics["quantization"]["bias_corrected_convs"] > 0) == (bits == 8)
    assert int8.calibration == fp32.calibration and int8.classes == fp32.classes
    assert int8.provenance["quantized_from"]["sha256"] == copy.sha256 != int8.sha256
    assert copy.metrics["fallback_for"] == "shop" and "Pad" not in {n.op_type for n in onnx.load(
        str(copy.onnx_path)).graph.node}
    batch = np.random.default_rng(0).uniform(-1, 1, (4, 3, 64, 64)).astype(np.float32)
    assert np.allclose(onnx_logits(cpu_session(copy.onnx_path), batch),
                       onnx_logits(cpu_session(fp32.onnx_path), batch), atol=1e-5)
    assert int8.metrics["measured_unfused"] == (bits == 8)
    images, targets = load_arrays(dataset, split_of(read_manifest(run / "split.json"), "val")[:12], fp32.preprocess)
    logits = onnx_logits(cpu_session(int8.onnx_path, fused=bits == 7), images)
    assert int8.metrics["val"]["accuracy"] == pytest.approx(float((logits.argmax(1) == targets).mean()))
    if bits == 7:
        assert int8.requires is None
    else:
        assert int8.requires.otherwise == "shop-fp32.json"
        assert for_this_cpu(int8, frozenset({"avx512_vnni"})) is int8
        assert for_this_cpu(int8, frozenset({"avx2"})).sha256 == copy.sha256
        # the suite on the int8 graph itself, as a VNNI CPU computes it, whatever this CPU has
        from export.robustness import get_args_parser as suite_parser
        from export.robustness import main as suite_main
        assert suite_main(suite_parser().parse_args([
            str(tmp_path / "shop.json"), "--data", str(dataset), "--manifest", str(run / "split.json"),
            "--split", "test", "--limit", "2", "--out", str(tmp_path / "suite"), "--unfused"])) == 0
        suite = json.loads((tmp_path / "suite" / "robustness.json").read_text())
        assert suite["bundle"] == "shop" and suite["sha256"] == int8.sha256 and suite["unfused"]
    assert create_app({"model": tmp_path / "shop.json", "ort_threads": 1}).test_client().post(
        "/v1/classify", data=SAMPLES[0].read_bytes(), content_type="image/jpeg").status_code == 200
