"""In-process cases: our pipeline per bundle, and (with torch) the old project's pipeline."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from server.bundle import load_bundle
from server.classify import Classifier
from server.config import Config
from server.runtime import Runtime


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


class Ours:
    """decode -> preprocess -> onnxruntime, as a worker does it, stage by stage."""

    def __init__(self, bundle_path: Path, threads: int, fast_decode: bool = True):
        self.bundle = load_bundle(bundle_path, verify_sha256=False)  # Runtime verifies the bytes
        self.runtime = Runtime(self.bundle, threads)
        self.runtime.warm_up()
        self.clf = Classifier(self.runtime, Config(fast_decode=fast_decode))

    def run(self, data: bytes, batch: int = 1) -> dict[str, float]:
        start = time.perf_counter()
        array, stages = self.clf.prepare(data)
        t = time.perf_counter()
        self.runtime.probabilities(self.runtime.infer(np.repeat(array[None], batch, 0)))
        return {"decode": stages["decode"] * 1000, "preprocess": stages["preprocess"] * 1000,
                "inference": _ms(t), "total": _ms(start)}

    def preprocess_only(self, data: bytes) -> dict[str, float]:
        start = time.perf_counter()
        self.clf.prepare(data)
        return {"total": _ms(start)}

    def decode_only(self, data: bytes) -> dict[str, float]:
        """The worker's decode stage alone: header checks, (drafted) pixels, upright RGB."""
        start = time.perf_counter()
        with self.clf.decoded(data):
            pass
        return {"total": _ms(start)}

    def infer_only(self, batch: np.ndarray) -> dict[str, float]:
        start = time.perf_counter()
        self.runtime.infer(batch)
        return {"total": _ms(start)}


def simplejpeg_decode(data: bytes, side: int) -> dict[str, float]:
    """libjpeg-turbo through simplejpeg at the smallest DCT scale that keeps both sides >=
    `side`: the other way to decode small that issue 21 names, timed beside Pillow's draft."""
    import simplejpeg

    start = time.perf_counter()
    simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side)
    return {"total": _ms(start)}


class Torch:
    """PyTorch eager on CPU: the old project's way (ResNet50, squashed 224x224) and our
    backbone the same way, for the ratios. Imported only when torch is installed."""

    def __init__(self, spec, backbones: list[str], threads: int, num_classes: int, views: int = 1):
        import torch
        from PIL import Image
        from torchvision import models
        from torchvision import transforms as T

        from training.models import Views, build_model
        from training.presets import eval_preset

        torch.set_num_threads(threads)
        self.torch, self.Image = torch, Image
        imagenet = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        # The old project: aspect ratio squashed, ImageNet ResNet50, fp32 eager.
        self.old_transform = T.Compose([T.Resize((224, 224)), T.ToTensor(), imagenet])
        self.resnet50 = models.resnet50().eval()  # timing only: weights do not change cost
        # Our preprocessing and network as training builds them (timm's run-time padding).
        self.transform = eval_preset(spec.resize, spec.crop, spec.mean, spec.std, spec.interpolation, spec.autocontrast)
        # An ensemble bundle runs every member: time them all, as the ONNX graph does.
        self.ours = [build_model(b, num_classes, pretrained=False).eval() for b in backbones]
        if views > 1:  # the same computation as the graph: every member over every flipped view
            self.ours = [Views(m, views).eval() for m in self.ours]

    def decode(self, data: bytes):
        return self.Image.open(io.BytesIO(data)).convert("RGB")

    def old_pipeline(self, data: bytes) -> dict[str, float]:
        start = time.perf_counter()
        image = self.decode(data)
        t1 = time.perf_counter()
        x = self.old_transform(image)[None]
        t2 = time.perf_counter()
        with self.torch.inference_mode():
            self.resnet50(x).softmax(1)
        return {"decode": (t1 - start) * 1000, "preprocess": (t2 - t1) * 1000, "inference": _ms(t2),
                "total": _ms(start)}

    def preprocess_only(self, data: bytes) -> dict[str, float]:
        start = time.perf_counter()
        self.transform(self.decode(data))
        return {"total": _ms(start)}

    def eager_ours(self, batch: np.ndarray) -> dict[str, float]:
        x = self.torch.from_numpy(batch)
        start = time.perf_counter()
        with self.torch.inference_mode():
            for model in self.ours:
                model(x)
        return {"total": _ms(start)}
