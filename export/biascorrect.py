"""Bias correction for int8 (Nagel et al. 2019, data-free quantisation, empirical form).

Rounding a convolution's weights to int8 shifts its mean output by (W_int8 - W) times the
mean of its input channels. The shifts are small one by one and add up through a deep
network of depthwise convolutions; taking each off its own bias, measured in fp32 on the
calibration pictures, removes the systematic part of the error and leaves the noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def dequantized_weights(qdq: Path) -> dict[str, np.ndarray]:
    """{Conv node name: its weight as the QDQ graph dequantises it}."""
    graph = onnx.load(str(qdq)).graph
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in graph.initializer}
    weights = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        q, scale = inits[node.input[0]], inits[node.input[1]]
        zero = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else np.zeros_like(scale)
        if scale.ndim == 1 and q.ndim > 1:  # per channel, along the node's axis
            shape = [1] * q.ndim
            shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        weights[node.output[0]] = (q - zero) * scale
    return {n.name: weights[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in weights}


def input_means(fp32: Path, names: list[str], calibration: np.ndarray, input_name: str, batch: int) -> dict:
    """Mean of each channel of each named tensor over the calibration pictures, in fp32."""
    model = onnx.load(str(fp32))
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    sums = dict.fromkeys(names, 0.0)
    for i in range(0, len(calibration), batch):
        values = dict(zip(outputs, session.run(None, {input_name: calibration[i:i + batch]})))
        for name in names:
            sums[name] = sums[name] + values[name].astype(np.float64).mean((2, 3)).sum(0)
    return {name: total / len(calibration) for name, total in sums.items()}


def correct_biases(fp32: Path, qdq: Path, calibration: np.ndarray, out: Path, input_name: str = "image",
                   batch: int = 8) -> int:
    """Write `fp32` with each convolution's bias less the mean shift of its `qdq` weights;
    the number of convolutions corrected."""
    model = onnx.load(str(fp32))
    inits = {i.name: i for i in model.graph.initializer}
    served = dequantized_weights(qdq)
    convs = [n for n in model.graph.node
             if n.op_type == "Conv" and n.name in served and len(n.input) > 2 and n.input[2] in inits]
    means = input_means(fp32, sorted({n.input[0] for n in convs}), calibration, input_name, batch)
    for node in convs:
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        out_ch, in_per_group = weight.shape[:2]
        error = (served[node.name] - weight).reshape(groups, out_ch // groups, in_per_group, -1)
        shift = np.einsum("gpik,gi->gp", error, means[node.input[0]].reshape(groups, in_per_group)).reshape(out_ch)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), node.input[2]))
    onnx.save(model, str(out))
    return len(convs)
