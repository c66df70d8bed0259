"""OpenVINO backend: the CPU plugin, running the same ONNX files as the ONNX Runtime CPU cells.

Why it is here: on x86 CPUs OpenVINO's oneDNN kernels run the static QDQ file faster than ONNX
Runtime's MLAS (DDRNet-23-slim at 360x480 on a 2-core AVX512-VNNI Xeon: INT8 convolutions
7.3 ms against QLinearConv's 9.9 ms), so it is the "best CPU INT8 path" candidate that issue #3
asks us to measure. It consumes the ORT-target QDQ artifacts (U8 activations, S8 per-channel
weights), the QAT QDQ export and the dynamic file unchanged: one artifact, two runtimes.

Two honesty points:

- The CPU plugin lowers float layers to bf16 on CPUs that have it (its default
  `INFERENCE_PRECISION_HINT`); that changes FP32 results and would make "fp32" cells something
  else. Cells pin the hint to f32, so FP32 means FP32 and INT8 cells keep their float layers in
  FP32, as on ONNX Runtime.
- What ran in INT8 is read back from the compiled model (`get_runtime_model()`: every executed
  primitive's `runtimePrecision`) and recorded in `info()["executed"]`; e.g. ORT's dynamic-PTQ
  file (DynamicQuantizeLinear + ConvInteger) compiles to float convolutions here, and the record
  says so (`int8_compute_layers` 0) instead of passing it off as INT8.
"""
from __future__ import annotations

import collections
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np

from bench.backends import BackendUnavailable

# Layer types of the CPU plugin's runtime graph that do the arithmetic (MACs) of a network.
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
INT8_PRECISIONS = ("u8", "i8")
# Bookkeeping nodes of the runtime graph, left out of the executed-layer summary.
_NOT_LAYERS = ("Const", "Input", "Output", "Parameter", "Result")


def import_openvino():
    """`import openvino` without its Model Conversion API (`openvino.tools.ovc`), which nothing here
    uses and whose import sends a usage-telemetry event to Google Analytics from a forked child
    process unless the user has opted out (openvino_telemetry's consent file). A benchmark must
    not fork, or phone home, while it measures; the package's `__init__` tolerates a missing ovc
    (it catches the ImportError), so blocking that one submodule during the import suffices. A
    user who imports `openvino.tools.ovc` later gets it as usual."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = "openvino.tools.ovc" not in sys.modules
    if blocked:
        sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if blocked and sys.modules.get("openvino.tools.ovc", 0) is None:
            del sys.modules["openvino.tools.ovc"]
    return openvino


def conflicting_unwinder() -> str | None:
    """The path of a libunwind.so mapped into this process, if any.

    GStreamer's `Gst.init` maps the nongnu libunwind.so.8, whose `_Unwind_*` symbols then win over
    libgcc's for libraries loaded later; OpenVINO throws and catches C++ exceptions internally
    (already in `Core.available_devices`), and unwinding them through libunwind.so.8 crashes the
    process (SIGSEGV or abort; measured with OpenVINO 2026.4 after torch and Gst.init). Such a
    process must not touch OpenVINO: bench cells run in processes of their own, which never load
    GStreamer."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    found = re.search(r"\S*/libunwind\.so[.0-9]*", maps)
    return found.group(0) if found else None


def _unwinder_reason(lib: str) -> str:
    return (f"this process has loaded {lib} (GStreamer does), with which OpenVINO's C++ exceptions crash; "
            "run OpenVINO in a process without GStreamer (bench.run cells are)")


def executed_layers(compiled) -> dict[str, dict[str, int]]:
    """{layer type: {runtime precision: count}} of a compiled model's executed primitives."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str)
        if layer not in _NOT_LAYERS:
            counts[layer][rt["runtimePrecision"].astype(str)] += 1
    return {layer: dict(sorted(c.items())) for layer, c in sorted(counts.items())}


def int8_compute_layers(executed: dict[str, dict[str, int]]) -> int:
    """How many MAC-carrying layers (convolutions, matmuls) run with 8-bit inputs."""
    return sum(n for layer in COMPUTE_LAYERS for prec, n in executed.get(layer, {}).items()
               if prec in INT8_PRECISIONS)


class OpenVinoBackend:
    name = "openvino"
    artifact_kind = "onnx"
    device = "cpu"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        # Checked without importing OpenVINO: `bench.run`'s parent process asks every backend, and
        # OpenVINO itself is only ever loaded in the cell processes (`load`).
        try:
            spec = importlib.util.find_spec("openvino")
        except (ImportError, ValueError):  # ValueError: a None entry in sys.modules
            spec = None
        if spec is None:
            return False, "openvino not installed; pip install openvino (or pip install -e '.[openvino]')"
        if lib := conflicting_unwinder():
            return False, _unwinder_reason(lib)
        return True, ""

    @staticmethod
    def config(threads: int) -> dict:
        """CPU plugin settings of a cell: one stream, `threads` inference threads, latency hint
        (batch-1 latency with the budget of an ONNX Runtime session with intra_op_num_threads =
        threads), float layers in f32."""
        return {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32"}

    def load(self, artifact: dict, *, threads: int, options: dict | None = None) -> None:
        ov = import_openvino()
        if lib := conflicting_unwinder():
            raise BackendUnavailable(_unwinder_reason(lib))
        core = ov.Core()
        if "CPU" not in core.available_devices:
            raise BackendUnavailable(f"OpenVINO has no CPU plugin here (devices: {core.available_devices})")
        self.compiled = core.compile_model(artifact["path"], "CPU", self.config(threads))
        self.request = self.compiled.create_infer_request()
        self._version = ov.__version__
        self._device = core.get_property("CPU", "FULL_DEVICE_NAME")
        self._executed = executed_layers(self.compiled)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # share_outputs=False (the default): a fresh array per call, as ONNX Runtime returns.
        return self.request.infer({0: batch})[0]

    def info(self) -> dict:
        return {"openvino": self._version, "device_name": self._device, "inference_precision": "f32",
                "int8_compute_layers": int8_compute_layers(self._executed), "executed": self._executed}

    def gpu_memory(self) -> dict | None:
        return None
