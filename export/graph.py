"""ONNX graph rewrites that change how a graph runs, never what it computes."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)


def constant_folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic (standard-ONNX) optimisations: constant subgraphs, such as the
    exporter's chain that builds each Pad's pads, become initializers."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _spatial_zero_pads(node: onnx.NodeProto, inits: dict) -> list[int] | None:
    """[top, left, bottom, right] of a Pad that adds zeros on H and W only, else None."""
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    if mode != b"constant" or len(node.input) < 2 or node.input[1] not in inits:  # opset < 11: an attribute
        return None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits or np.any(numpy_helper.to_array(inits[node.input[2]]) != 0):
            return None
    if len(node.input) > 3 and node.input[3]:  # axes given: the pads' order is not NCHW's
        return None
    pads = numpy_helper.to_array(inits[node.input[1]]).astype(int).tolist()
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def fold_pads(model: onnx.ModelProto) -> int:
    """Fold each zero Pad whose only reader is a Conv into that Conv's `pads`; the count.

    A separate Pad costs a copy of its tensor, and in a QDQ graph it runs in float between
    a DequantizeLinear and a QuantizeLinear; a Conv pads with its input's zero point."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for node in graph.node:
        users = readers.get(node.output[0], []) if node.op_type == "Pad" else []
        if len(users) != 1 or users[0].op_type != "Conv" or node.output[0] in outputs:
            continue
        conv, pads = users[0], _spatial_zero_pads(node, inits)
        attrs = {a.name: a for a in conv.attribute}
        if pads is None or ("auto_pad" in attrs and attrs["auto_pad"].s != b"NOTSET"):
            continue
        if conv.input[0] != node.output[0]:  # the padded tensor is the Conv's weight or bias
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(helper.make_attribute("pads", [a + b for a, b in zip(old, pads)]))
        conv.input[0] = node.input[0]
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used and i.name not in outputs]:
        graph.initializer.remove(init)
    return len(folded)


def _pads(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Pad" for n in model.graph.node)


def with_pads_folded(src: Path, dst: Path) -> int:
    """`src` constant-folded, its Pads folded into their convolutions, written to `dst`;
    the number of Pads gone (onnxruntime folds some itself, when a Pad has no empty input)."""
    source = onnx.load(str(src))
    model = constant_folded(source)
    fold_pads(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    gone = _pads(source) - _pads(model)
    log.info("%d Pad nodes folded into their convolutions", gone)
    return gone
