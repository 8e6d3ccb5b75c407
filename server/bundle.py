"""The model bundle: `NAME.onnx` beside `NAME.json`, the one contract between the stages.

Written by `export/`, read by the server and the benchmark. Everything downstream takes
class names, input shape and preprocessing numbers from here, never from its own code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# CPU flags whose u8s8 dot products sum in 32 bits: int8 graphs with full 8-bit weights
# compute there what they say; elsewhere 16-bit pair sums can saturate.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
log = logging.getLogger(__name__)


class BundleError(ValueError):
    """The bundle is missing, corrupt or inconsistent; the message is one line for an operator."""


@dataclass(frozen=True)
class Preprocess:
    """torchvision's Resize(resize) + CenterCrop(crop) + ToTensor + Normalize(mean, std);
    with `autocontrast` (a percent), Pillow's autocontrast on the crop before ToTensor."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    autocontrast: float | None = None


@dataclass(frozen=True)
class Calibration:
    """probabilities = softmax((logits + logit_offsets) / temperature), both fitted on val at export."""

    temperature: float = 1.0
    uncertain_below: float = 0.5
    logit_offsets: tuple[float, ...] | None = None  # per class, output order; None: no adjustment


@dataclass(frozen=True)
class Requires:
    """The graph is right only on a CPU with one of these flags; `otherwise` names the
    bundle beside this one (the same network, another graph) to serve on any other CPU."""

    cpu_flags_any: tuple[str, ...]
    otherwise: str


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, int, int, int]  # [batch (None = dynamic), 3, height, width]


@dataclass(frozen=True)
class Bundle:
    name: str
    onnx: str  # file name, beside the JSON
    sha256: str
    classes: tuple[str, ...]
    input: InputSpec
    preprocess: Preprocess
    calibration: Calibration
    output: str = "logits"
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    requires: Requires | None = None
    schema_version: int = SCHEMA_VERSION
    folder: Path = field(default=Path("."), compare=False)

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.onnx

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("folder")
        return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise BundleError(what)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _preprocess(raw: Any) -> Preprocess:
    _require(isinstance(raw, dict), "preprocess must be an object")
    for key in ("resize", "crop"):
        _require(isinstance(raw.get(key), int) and raw[key] > 0, f"preprocess.{key} must be a positive integer")
    _require(raw.get("interpolation") in INTERPOLATIONS, f"preprocess.interpolation must be one of {INTERPOLATIONS}")
    for key in ("mean", "std"):
        value = raw.get(key)
        _require(isinstance(value, list) and len(value) == 3 and all(map(_number, value)),
                 f"preprocess.{key} must be three numbers")
    _require(all(s > 0 for s in raw["std"]), "preprocess.std must be positive")
    cutoff = raw.get("autocontrast")
    _require(cutoff is None or (_number(cutoff) and 0 <= cutoff < 50),
             "preprocess.autocontrast must be null or a percent in [0, 50)")
    return Preprocess(raw["resize"], raw["crop"], raw["interpolation"], tuple(raw["mean"]), tuple(raw["std"]),
                      None if cutoff is None else float(cutoff))


def _input(raw: Any, crop: int) -> InputSpec:
    _require(isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"], "input.name must be a string")
    shape = raw.get("shape")
    _require(isinstance(shape, list) and len(shape) == 4, "input.shape must be [batch, 3, height, width]")
    _require(shape[0] is None or (isinstance(shape[0], int) and shape[0] > 0), "input.shape[0] must be null or > 0")
    _require(shape[1] == 3, "input.shape[1] must be 3 (RGB)")
    _require(shape[2] == crop and shape[3] == crop, f"input.shape {shape} does not match preprocess.crop {crop}")
    return InputSpec(raw["name"], tuple(shape))


def _requires(raw: Any) -> Requires | None:
    if raw is None:
        return None
    _require(isinstance(raw, dict), "requires must be null or an object")
    flags, otherwise = raw.get("cpu_flags_any"), raw.get("otherwise")
    _require(isinstance(flags, list) and flags and all(isinstance(f, str) and f for f in flags),
             "requires.cpu_flags_any must list at least one CPU flag")
    _require(isinstance(otherwise, str) and otherwise.endswith(".json") and Path(otherwise).name == otherwise,
             "requires.otherwise must name a bundle JSON beside this one")
    return Requires(tuple(flags), otherwise)


def parse_bundle(raw: Any, folder: Path) -> Bundle:
    """Validate a bundle dict; raise BundleError naming the first thing wrong."""
    _require(isinstance(raw, dict), "bundle JSON must be an object")
    for key in ("name", "onnx", "sha256"):
        _require(isinstance(raw.get(key), str) and raw[key], f"{key} must be a non-empty string")
    _require(Path(raw["onnx"]).name == raw["onnx"], "onnx must be a file name beside the JSON")
    classes = raw.get("classes")
    _require(isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes),
             "classes must list at least two names")
    _require(len(set(classes)) == len(classes), "classes must be unique")
    preprocess = _preprocess(raw.get("preprocess"))
    cal = raw.get("calibration", {})
    _require(isinstance(cal, dict), "calibration must be an object")
    offsets = cal.get("logit_offsets")
    _require(offsets is None or (isinstance(offsets, list) and len(offsets) == len(classes)
                                 and all(map(_number, offsets))),
             f"calibration.logit_offsets must be null or {len(classes)} numbers, one per class")
    calibration = Calibration(cal.get("temperature", 1.0), cal.get("uncertain_below", 0.5),
                              None if offsets is None else tuple(float(v) for v in offsets))
    _require(_number(calibration.temperature) and calibration.temperature > 0, "calibration.temperature must be > 0")
    _require(_number(calibration.uncertain_below) and 0 <= calibration.uncertain_below <= 1,
             "calibration.uncertain_below must be within [0, 1]")
    for key in ("metrics", "provenance"):
        _require(isinstance(raw.get(key, {}), dict), f"{key} must be an object")
    return Bundle(
        name=raw["name"], onnx=raw["onnx"], sha256=raw["sha256"].lower(), classes=tuple(classes),
        input=_input(raw.get("input"), preprocess.crop), preprocess=preprocess, calibration=calibration,
        output=raw.get("output", "logits"), metrics=raw.get("metrics", {}), provenance=raw.get("provenance", {}),
        requires=_requires(raw.get("requires")), schema_version=raw.get("schema_version", SCHEMA_VERSION),
        folder=folder,
    )


def load_bundle(path: str | Path, verify_sha256: bool = True) -> Bundle:
    """Read and validate `NAME.json`; with verify_sha256, also hash the ONNX file beside it."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"model bundle not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"model bundle {path} is not readable JSON: {exc}") from None
    try:
        bundle = parse_bundle(raw, path.parent)
    except BundleError as exc:
        raise BundleError(f"model bundle {path}: {exc}") from None
    if verify_sha256:
        read_model(bundle)
    return bundle


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux names them; none where /proc/cpuinfo is not there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def for_this_cpu(bundle: Bundle, flags: frozenset[str] | None = None, verify_sha256: bool = True) -> Bundle:
    """The bundle to serve on this CPU: this one, or the one it names for a CPU without the
    flags its graph needs. That one must run anywhere and answer in the same classes."""
    needs = bundle.requires
    flags = cpu_flags() if flags is None else flags
    if needs is None or flags & set(needs.cpu_flags_any):
        return bundle
    other = load_bundle(bundle.folder / needs.otherwise, verify_sha256)
    _require(other.requires is None, f"{needs.otherwise}, served where {bundle.name} cannot be, has needs of its own")
    _require(other.classes == bundle.classes, f"{needs.otherwise} has other classes than {bundle.name}")
    log.warning("this CPU has none of %s, which %s needs: serving %s instead",
                ", ".join(needs.cpu_flags_any), bundle.name, other.name)
    return other


def read_model(bundle: Bundle) -> bytes:
    """The ONNX file's bytes, refused unless they hash to the bundle's sha256. A session
    built from these very bytes cannot serve a file swapped after the check."""
    try:
        data = bundle.onnx_path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise BundleError(f"model file missing: {bundle.onnx_path}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != bundle.sha256:
        raise BundleError(f"model file {bundle.onnx_path} has sha256 {actual[:12]}..., "
                          f"bundle says {bundle.sha256[:12]}...: refusing a model that is not the one shipped")
    return data


def write_bundle(bundle: Bundle, json_path: Path) -> None:
    json_path = Path(json_path)
    json_path.write_text(json.dumps(bundle.to_json(), indent=1) + "\n")
