"""Things tests build: a tiny ONNX model and its bundle, encoded images."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
CROP = 32
# logits = mean normalised colour (R, G, B) @ W: a pure red frame is cardboard, green
# glass, blue metal, white paper, black plastic, yellow trash.
W = np.array([
    [2, -1, -1, 1, -1, 1],
    [-1, 2, -1, 1, -1, 1],
    [-1, -1, 2, 1, -1, -2],
], np.float32) * 3
EXPECTED = {(255, 0, 0): "cardboard", (0, 255, 0): "glass", (0, 0, 255): "metal",
            (255, 255, 255): "paper", (0, 0, 0): "plastic", (255, 255, 0): "trash"}


def tiny_onnx(path: Path, crop: int = CROP) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, crop, crop])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"), numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.write_bytes(data)
    return data


def bundle_dict(name: str, data: bytes, crop: int = CROP) -> dict:
    return {
        "name": name,
        "onnx": f"{name}.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "classes": CLASSES,
        "input": {"name": "image", "shape": [None, 3, crop, crop]},
        "output": "logits",
        "preprocess": {"resize": crop + 4, "crop": crop, "interpolation": "bilinear",
                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "calibration": {"temperature": 1.5, "uncertain_below": 0.5},
        "metrics": {"note": "tiny test model"},
        "provenance": {"backbone": "tiny", "data": "generated", "split_manifest": None, "commit": None},
    }


def make_bundle(folder: Path, name: str = "tiny") -> Path:
    data = tiny_onnx(folder / f"{name}.onnx")
    path = folder / f"{name}.json"
    path.write_text(json.dumps(bundle_dict(name, data)))
    return path


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def solid(rgb, size=(64, 48), fmt="PNG") -> bytes:
    return encode(Image.new("RGB", size, rgb), fmt)


def make_dataset(root: Path, per_class: int = 8, classes=CLASSES[:3], seed: int = 0) -> Path:
    """A folder-per-class set of small generated photos: a coloured blob per class on a
    noisy background; plus one byte-identical picture filed in two classes and one
    unreadable file, as TrashNet has."""
    rng = np.random.default_rng(seed)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200), (40, 200, 200)]
    for c, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = Image.fromarray(rng.integers(60, 200, (6, 8, 3)).astype(np.uint8))
            pixels = np.asarray(coarse.resize((80, 60), Image.Resampling.BILINEAR), np.float64)
            pixels = pixels + rng.normal(0, 3, pixels.shape)  # photo-like: smooth, a little sensor noise
            x, y = rng.integers(10, 50), rng.integers(10, 30)
            pixels[y:y + 25, x:x + 25] = colours[c]
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / label / f"{label}{i}.jpg")
    twin = (root / classes[0] / f"{classes[0]}0.jpg").read_bytes()
    (root / classes[1] / "twin.jpg").write_bytes(twin)
    (root / classes[2] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def at_least(k: int, n: int, accuracy: float) -> float:
    """The chance that a network this accurate gets at least k of n pictures right."""
    return sum(math.comb(n, i) * accuracy**i * (1 - accuracy) ** (n - i) for i in range(k, n + 1))


def fewest_right(n: int, accuracy: float, chance: float = 0.99) -> int:
    """The most right answers of n that a network this accurate reaches with this chance: a
    floor for a few sample photos that follows the bundle's recorded accuracy."""
    return max(k for k in range(n + 1) if at_least(k, n, accuracy) >= chance)
