"""PyTorch to ONNX, and the proof that both compute the same logits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from training.models import Views, mean_probability

from .graph import with_pads_folded

log = logging.getLogger(__name__)
OPSET = 18


class StaticPadConv2d(nn.Conv2d):
    """TF 'same' padding with the pads worked out once for a fixed input size.

    timm's Conv2dSame computes its pads from the input shape at run time; exported, that
    is a Shape/Gather/Sub/Max chain before every strided conv (595 nodes for 49 convs).
    The server's input size is fixed by the bundle, so the pads are constants.
    """

    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Ensemble(nn.Module):
    """Several networks as one graph: the mean of their probabilities, returned as its log.

    softmax(log mean p) is mean p again, so the server's softmax-with-temperature needs no
    special case; averaging probabilities rather than raw logits keeps one over-confident
    member from outvoting the others.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return mean_probability(torch.stack([m(image).log_softmax(1) for m in self.members]), len(self.members))


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((-(size // -stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def static_same_padding(model: nn.Module, size: int) -> int:
    """Replace every dynamic-'same' conv by a StaticPadConv2d for a size x size input."""
    from timm.layers.conv2d_same import Conv2dSame

    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: shapes.__setitem__(name, a[0].shape[-2:]))
             for name, m in model.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, (height, width) in shapes.items():
        old = model.get_submodule(name)
        new = StaticPadConv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, 0, old.dilation,
                              old.groups, old.bias is not None)
        new.load_state_dict(old.state_dict())
        top, bottom = _same_pads(height, old.kernel_size[0], old.stride[0], old.dilation[0])
        left, right = _same_pads(width, old.kernel_size[1], old.stride[1], old.dilation[1])
        new.pads = (left, right, top, bottom)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return len(shapes)


def output_name(model: nn.Module) -> str:
    """One network gives logits; an ensemble or a views average gives log-probabilities
    (softmax of either is the probability, so the server treats them alike)."""
    return "log_probs" if isinstance(model, (Ensemble, Views)) else "logits"


def to_onnx(model: nn.Module, path: Path, size: int, opset: int = OPSET) -> onnx.ModelProto:
    """Export with input `image`, output `logits` (or `log_probs`), a dynamic batch axis, the pads
    folded into the convolutions (export.graph); checker must pass."""
    model = model.eval().float().to(memory_format=torch.contiguous_format)
    name = output_name(model)
    torch.onnx.export(
        model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=opset,
        input_names=["image"], output_names=[name],
        dynamic_axes={"image": {0: "batch"}, name: {0: "batch"}}, do_constant_folding=True,
    )
    with_pads_folded(path, path)  # checked there
    return onnx.load(str(path))


def parity(model: nn.Module, session, batch: np.ndarray) -> dict:
    """Largest |logit difference| and argmax agreement, PyTorch vs onnxruntime."""
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    got = session.run(None, {"image": batch})[0]
    return {
        "images": int(len(batch)),
        "max_abs_logit_diff": float(np.abs(got - expected).max()),
        "argmax_equal": bool((got.argmax(1) == expected.argmax(1)).all()),
    }
