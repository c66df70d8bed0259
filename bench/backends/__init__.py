"""Inference backends as optional plugins.

Heavy imports happen inside each backend, and `available()` says whether it can run here (and
why not), so a missing runtime or device becomes a `skipped` cell instead of a crash. A backend
may also raise `BackendUnavailable` from `load()` when it finds out only then (an execution
provider that is compiled in but cannot start, for example); that is a skipped cell too.

Backend names (one per runtime *and* device, so a record says exactly what ran):

    torch             PyTorch eager, CPU                    (artifact: FP32 state dict)
    torch-cuda        PyTorch eager, CUDA                   (needs a CUDA GPU)
    onnxruntime       ONNX Runtime, CPU execution provider  (artifact: ONNX)
    onnxruntime-cuda  ONNX Runtime, CUDA execution provider (onnxruntime-gpu and a GPU)
    onnxruntime-trt   ONNX Runtime, TensorRT execution provider
    openvino          OpenVINO, CPU plugin (f32 float layers)  (artifact: ONNX, the ORT files)
    tensorrt          TensorRT engine built from the ONNX   (tensorrt and a CUDA GPU)
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class BackendUnavailable(Exception):
    """The backend cannot run on this machine; the cell is recorded as skipped with this reason."""


class Backend(Protocol):
    name: str
    artifact_kind: str   # which prepared artifact it loads: "torch" or "onnx"
    device: str          # "cpu" or "cuda"

    @classmethod
    def available(cls) -> tuple[bool, str]: ...

    def load(self, artifact: dict, *, threads: int, options: dict) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


BACKENDS = ("torch", "torch-cuda", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "openvino", "tensorrt")


def get_backend(name: str) -> type:
    if name in ("torch", "torch-cuda"):
        from bench.backends.torch import TorchBackend, TorchCudaBackend

        return TorchBackend if name == "torch" else TorchCudaBackend
    if name in ("onnxruntime", "onnxruntime-cuda", "onnxruntime-trt"):
        from bench.backends import onnxruntime as ortb

        return {"onnxruntime": ortb.OrtBackend, "onnxruntime-cuda": ortb.OrtCudaBackend,
                "onnxruntime-trt": ortb.OrtTensorrtBackend}[name]
    if name == "openvino":
        from bench.backends.openvino import OpenVinoBackend

        return OpenVinoBackend
    if name == "tensorrt":
        from bench.backends.tensorrt import TensorrtBackend

        return TensorrtBackend
    raise KeyError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}, all")


def precision_of(backend: type, variant: str, options: dict[str, Any] | None = None) -> str:
    """The arithmetic a cell runs in: the variant's, unless the backend lowers it (TensorRT
    builds FP16 engines from the FP32 ONNX unless told otherwise)."""
    fn = getattr(backend, "precision", None)
    if fn is not None:
        return fn(variant, options or {})
    return {"fp32": "fp32"}.get(variant, "int8")


def device_of(backend: type, options: dict[str, Any] | None = None) -> str:
    """Where a cell runs: "cpu", "cuda", or "dla<N>" for TensorRT engines placed on a DLA core."""
    options = options or {}
    if backend.name in ("tensorrt", "onnxruntime-trt") and options.get("dla_core") is not None:
        return f"dla{int(options['dla_core'])}"
    return backend.device
