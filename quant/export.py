"""ONNX export: opset 17, checked with `onnx.checker`, simplified with onnxsim, written atomically.

Shapes are static (the benchmark measures one input size per cell), which is also what
TensorRT builds the fastest engines for.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from zoo.io import atomic_path

OPSET = 17


class ExportError(Exception):
    pass


def export_onnx(model: nn.Module, path: str | Path, *, input_hw: tuple[int, int], batch: int = 1,
                simplify: bool = True, opset: int = OPSET) -> Path:
    """Export `model` (eval mode) to `path`; returns the path."""
    path = Path(path)
    model = model.eval()
    dummy = torch.randn(batch, 3, *input_hw)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        # The TorchScript exporter gives plain, TensorRT-friendly graphs for these CNNs.
        torch.onnx.export(model, (dummy,), buffer, opset_version=opset, input_names=["input"],
                          output_names=["logits"], do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    if simplify:
        from onnxsim import simplify as onnxsim_simplify

        simplified, ok = onnxsim_simplify(proto)
        if not ok:
            raise ExportError(f"onnxsim could not validate the simplified graph of {type(model).__name__}")
        proto = simplified
        onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path
