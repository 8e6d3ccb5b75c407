"""One onnxruntime session per worker process, created after gunicorn forks."""

from __future__ import annotations

import functools
import logging
import threading
import time

import numpy as np
import onnxruntime as ort

from .bundle import Bundle, BundleError, read_model

log = logging.getLogger(__name__)


@functools.cache  # once per process: every session of the process shares this arena
def _register_arena() -> None:
    """A CPU arena that grows by what a run asks for, not to the next power of two
    (onnxruntime's default): a worker's resident memory stays closer to what it uses."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # max_mem 0: no cap; extend strategy 1: kSameAsRequested; -1: defaults for the rest
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))


def session_options(threads: int, spinning: bool, arena: bool, mem_pattern: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    if arena:
        _register_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.enable_mem_pattern = mem_pattern  # see Config.ort_mem_pattern
    # Spinning threads keep burning a core for ms after each run; with two workers on
    # two cores they steal each other's cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


class Runtime:
    """The loaded model: verified bytes, a session, and the bundle's calibration."""

    def __init__(self, bundle: Bundle, threads: int, spinning: bool = False, arena: bool = True,
                 parallel_runs: int = 1, mem_pattern: bool = False):
        self.bundle = bundle
        self._runs = threading.BoundedSemaphore(parallel_runs)  # see Config.ort_parallel_runs
        self.ready = threading.Event()
        data = read_model(bundle)
        try:
            self.session = ort.InferenceSession(data, session_options(threads, spinning, arena, mem_pattern),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BundleError(f"model file {bundle.onnx_path} cannot be loaded by onnxruntime: "
                              f"{str(exc).splitlines()[0][:200]}") from None
        self._check_signature()
        self.temperature = np.float32(bundle.calibration.temperature)
        offsets = bundle.calibration.logit_offsets
        self.offsets = np.zeros(len(bundle.classes)) if offsets is None else np.asarray(offsets, np.float64)

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        spec = self.bundle.input
        if len(inputs) != 1 or inputs[0].name != spec.name:
            raise BundleError(f"model inputs {[i.name for i in inputs]} do not match the bundle's {spec.name!r}")
        fixed = [d if isinstance(d, int) else None for d in inputs[0].shape]
        if fixed[1:] != list(spec.shape[1:]):
            raise BundleError(f"model input shape {inputs[0].shape} does not match the bundle's {list(spec.shape)}")
        width = outputs[0].shape[-1] if outputs else None
        if len(outputs) != 1 or (isinstance(width, int) and width != len(self.bundle.classes)):
            raise BundleError(f"model output {[(o.name, o.shape) for o in outputs]} does not give "
                              f"{len(self.bundle.classes)} logits")

    def warm_up(self, runs: int = 3) -> float:
        """First runs allocate the arena and pick kernels; do them before /readyz says yes."""
        start = time.perf_counter()
        batch = np.zeros((1, *self.bundle.input.shape[1:]), np.float32)
        for _ in range(runs):
            logits = self.infer(batch)
        if logits.shape != (1, len(self.bundle.classes)):
            raise BundleError(f"model gives logits of shape {logits.shape}, expected (1, {len(self.bundle.classes)})")
        self.ready.set()
        return (time.perf_counter() - start) * 1000

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._runs:
            return self.session.run(None, {self.bundle.input.name: batch})[0]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated softmax: offsets and temperature fitted on the validation split at export."""
        z = (logits.astype(np.float64) + self.offsets) / float(self.temperature)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
