"""Static int8 quantisation (QDQ, per-channel), calibrated on training images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from server.bundle import VNNI_FLAGS, Requires, cpu_flags

from .biascorrect import correct_biases

log = logging.getLogger(__name__)
BATCH = 8  # calibration images a run: the calibrator holds every activation of a few runs at once


def has_vnni() -> bool:
    """Without VNNI, u8s8 dot products can saturate: quantise weights to 7 bits (reduce_range)."""
    return bool(cpu_flags() & set(VNNI_FLAGS))


def requires(info: dict, fp32_json: str) -> Requires | None:
    """8-bit weights are right only where u8s8 sums do not saturate: such a bundle names
    the fp32 graph of the same network for every other CPU."""
    return Requires(VNNI_FLAGS, fp32_json) if info["weight_bits"] == 8 else None


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray], input_name: str):
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)


def _flush_every(n_batches: int) -> int | None:
    """onnxruntime raises "No data is collected" when the batch count is a multiple of the
    flush interval (the last flush empties its buffer): pick an interval that is not."""
    return next((k for k in range(4, 12) if n_batches % k), None)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, input_name: str = "image",
                  batch: int = BATCH, weight_bits: int | None = None, bias_correction: bool = False,
                  widen_for_bias: bool = True) -> dict:
    """`fp32` as export writes graphs (pads folded, export.graph). `weight_bits` 7 or 8;
    None: 7 where the CPU has no VNNI, else 8. `bias_correction`:
    quantised twice, each convolution's bias corrected in between (export.biascorrect).
    `widen_for_bias` False: a bias too large for its 32-bit scale clips instead of widening
    its weight's scale; bias correction sets it, so that the rounding corrected is the one
    served."""
    if weight_bits not in (None, 7, 8):
        raise ValueError(f"int8 weights take 7 or 8 bits, not {weight_bits}")
    options = dict(input_name=input_name, batch=batch, weight_bits=weight_bits)
    if bias_correction:
        corrected = out.with_suffix(".corrected.onnx")
        quantize_int8(fp32, out, calibration, widen_for_bias=False, **options)
        n = correct_biases(fp32, out, calibration, corrected, input_name, batch)
        info = quantize_int8(corrected, out, calibration, widen_for_bias=False, **options)
        corrected.unlink(missing_ok=True)
        return {**info, "bias_corrected_convs": n}
    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    reduce_range = not has_vnni() if weight_bits is None else weight_bits == 7
    batches = [calibration[i:i + batch] for i in range(0, len(calibration), batch)]
    quantize_static(
        str(prepared), str(out), _Reader(batches, input_name),
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        # MinMax streams: ranges are reduced every few batches, so memory stays flat. The
        # percentile calibrator keeps every activation of every image (OOM at 24 GB for
        # Lite2 x 256 images); Lite's ReLU6 bounds activations anyway, which is what
        # percentile clipping would be for.
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(batches)),
                       "QDQDisableWeightAdjustForInt32Bias": not widen_for_bias},
    )
    prepared.unlink(missing_ok=True)
    return {"format": "QDQ", "per_channel": True, "reduce_range": reduce_range,
            "weight_bits": 7 if reduce_range else 8, "activations": "uint8",
            "weights": "int8", "calibration": "minmax", "calibration_images": int(len(calibration)),
            "widen_for_bias": widen_for_bias, "bias_corrected_convs": 0}
