"""export.graph: the pads folded into the convolutions, and only where that computes the same."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.graph import fold_pads, with_pads_folded

RNG = np.random.default_rng(0)


def padded_conv(pads, value=None, mode="constant", readers=1, conv_pads=(1, 0, 1, 0)):
    """image -> Pad -> Conv (stride 2, 3x3), `readers` convolutions reading the Pad."""
    inits = [numpy_helper.from_array(np.asarray(pads, np.int64), "pads")]
    pad_inputs = ["image", "pads", ""]  # the exporter's empty constant_value, as onnxruntime leaves it
    if value is not None:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), "value"))
        pad_inputs[2] = "value"
    nodes = [helper.make_node("Pad", pad_inputs, ["padded"], mode=mode)]
    outputs = []
    for i in range(readers):
        inits.append(numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", ["padded", f"w{i}"], [f"out{i}"], strides=[2, 2],
                                      pads=list(conv_pads)))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [None, 4, None, None]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                        [None, 3, 17, 16])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model, image):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
        "image": image})


def test_zero_pads_on_height_and_width_fold_into_the_conv_and_compute_the_same():
    model = padded_conv([0, 0, 0, 1, 0, 0, 1, 2])
    image = RNG.normal(size=(2, 3, 17, 16)).astype(np.float32)
    before = run(model, image)
    assert fold_pads(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    conv = model.graph.node[0]
    assert conv.input[0] == "image"
    assert next(a.ints for a in conv.attribute if a.name == "pads") == [1, 1, 2, 2]  # its own pads added
    assert "pads" not in {i.name for i in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(run(model, image)[0], before[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", [
    dict(pads=[0, 0, 0, 1, 0, 0, 1, 1], value=0.5),  # not zeros
    dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),
    dict(pads=[0, 1, 0, 0, 0, 0, 0, 0]),  # a channel added
    dict(pads=[0, 0, 0, 1, 0, 0, 1, 1], readers=2),  # the padded tensor has other readers
])
def test_other_pads_stay(case):
    model = padded_conv(**case)
    assert fold_pads(model) == 0
    assert [n.op_type for n in model.graph.node].count("Pad") == 1


def test_a_file_whose_pads_are_computed_is_constant_folded_first(tmp_path):
    # the exporter builds each Pad's pads with a chain of constant nodes, not an initializer
    model = padded_conv([0, 0, 0, 1, 0, 0, 1, 1])
    graph = model.graph
    graph.initializer.remove(next(i for i in graph.initializer if i.name == "pads"))
    graph.node.insert(0, helper.make_node("Constant", [], ["half"], value=numpy_helper.from_array(
        np.asarray([0, 0, 0, 1], np.int64))))
    graph.node.insert(1, helper.make_node("Concat", ["half", "half"], ["pads"], axis=0))
    image = RNG.normal(size=(1, 3, 17, 16)).astype(np.float32)
    before = run(model, image)[0]
    onnx.save(model, str(tmp_path / "src.onnx"))
    assert with_pads_folded(tmp_path / "src.onnx", tmp_path / "dst.onnx") == 1
    folded = onnx.load(str(tmp_path / "dst.onnx"))
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    np.testing.assert_allclose(run(folded, image)[0], before, rtol=0, atol=1e-5)
