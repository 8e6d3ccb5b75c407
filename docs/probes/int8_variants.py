"""int8 variants of the round-3 fold networks, out of fold, as served: `PYTHONPATH=. python docs/probes/int8_variants.py`
(kept in git history only; docs/selection-rule.md, "int8, again")."""
import json, sys, time
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process
from server.bundle import load_bundle
from training.data import read_manifest, split_of
from export.__main__ import load_arrays
from export.quantize import _Reader, _flush_every

D = Path("../shared/data/trashnet/dataset-resized")
OUT = Path("/work/logs/r4/int8")
VARIANTS = {
    "u8s8_rr": dict(weight_type=QuantType.QInt8, reduce_range=True, exclude=False),
    "u8u8": dict(weight_type=QuantType.QUInt8, reduce_range=False, exclude=False),
    "u8s8_rr_ends": dict(weight_type=QuantType.QInt8, reduce_range=True, exclude=True),
    "u8u8_ends": dict(weight_type=QuantType.QUInt8, reduce_range=False, exclude=True),
}

def session(path):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

def logits(s, x):
    return np.concatenate([s.run(None, {"image": x[i:i + 32]})[0] for i in range(0, len(x), 32)])

committed = read_manifest(Path("training/splits/trashnet.json"))
results = {}
for i in range(3):
    bundle = load_bundle(Path(f"runs/oof-bundle-{i}/ecosort.json"))
    spec = bundle.preprocess
    fp32 = Path(f"runs/oof-bundle-{i}/ecosort.onnx")
    train = split_of(committed, "train")
    pick = np.random.default_rng(0).permutation(len(train))[:256]
    calib, _ = load_arrays(D, [train[j] for j in sorted(pick)], spec)
    val, targets = load_arrays(D, split_of(read_manifest(Path(f"training/splits/cv3/fold-{i}.json")), "val"), spec)
    pre = OUT / f"pre-{i}.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    nodes = onnx.load(str(pre)).graph.node
    ends = [next(n.name for n in nodes if n.op_type == "Conv"),
            [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")][-1]]
    out = {"fp32": logits(session(fp32), val)}
    for name, v in VARIANTS.items():
        q = OUT / f"{name}-{i}.onnx"
        batches = [calib[k:k + 8] for k in range(0, len(calib), 8)]
        quantize_static(str(pre), str(q), _Reader(batches, "image"), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=v["reduce_range"], activation_type=QuantType.QUInt8,
                        weight_type=v["weight_type"], calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=ends if v["exclude"] else [],
                        extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(batches))})
        out[name] = logits(session(q), val)
    np.savez(OUT / f"fold-{i}.npz", targets=targets, **out)
    results[i] = {k: int((v.argmax(1) == targets).sum()) for k, v in out.items()} | {"n": len(targets)}
    print(i, results[i], flush=True)
tot = {k: sum(r[k] for r in results.values()) for k in results[0]}
print("pooled", tot, {k: round(v / tot["n"] * 100, 2) for k, v in tot.items() if k != "n"})
json.dump(results, open(OUT / "results.json", "w"), indent=1)
