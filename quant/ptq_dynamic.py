"""Dynamic post-training quantization: weights INT8 ahead of time, activations at run time.

For the zoo's conv-only networks this is the weak variant, and the metadata says so:

* ONNX Runtime (`quantize_dynamic_onnx`) turns Conv into ``DynamicQuantizeLinear -> ConvInteger``.
  Weights are QUInt8: the CPU ConvInteger kernel was u8u8 only (microsoft/onnxruntime#6430), and
  with ORT's default ``weight_type=QInt8`` sessions failed to load (``NOT_IMPLEMENTED:
  ConvInteger(10)``, #15888, #23985). ORT 1.32 loads and runs s8 weights, but on DDRNet-23-slim
  at 360x480 they took ~2.9x as long as u8 weights (321 vs 112 ms, 2 threads), so u8 stays. Even
  u8 has no optimised path (#12854): expect it slower than FP32; a size variant, not a speed one.
* PyTorch (`quantize_dynamic_torch`) only quantizes Linear / recurrent layers and leaves every
  convolution in float; for a conv-only network the result is FP32 in all but name.
"""
from __future__ import annotations

import copy
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch.nn as nn

from quant.calibrate import QuantError
from quant.onnx_inspect import inspect_onnx
from quant.ptq_static import drop_unused_opsets, input_spec, library_versions, onnx_opset, ort_pre_process
from quant.qdq_onnx import compact_int8_model
from zoo.io import atomic_path, sha256_file, write_json


def _ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(fp32_onnx: str | Path, int8_onnx: str | Path, inputs: Sequence[np.ndarray],
           threads: int = 1) -> dict[str, float]:
    """How closely ``int8_onnx`` follows ``fp32_onnx`` on ``inputs`` (ORT CPU).

    ``argmax_agreement``: fraction of output pixels with the same arg-max class (segmentation
    logits, NCHW); ``rel_l2``: ||int8 - fp32|| / ||fp32|| over all outputs.
    """
    ref, test = _ort_session(Path(fp32_onnx), threads), _ort_session(Path(int8_onnx), threads)
    name = ref.get_inputs()[0].name
    agree = total = 0
    err = norm = 0.0
    for x in inputs:
        a = ref.run(None, {name: x})[0]
        b = test.run(None, {name: x})[0]
        if a.ndim == 4:
            agree += int((a.argmax(1) == b.argmax(1)).sum())
            total += a.shape[0] * a.shape[2] * a.shape[3]
        err += float(np.sum((a.astype(np.float64) - b) ** 2))
        norm += float(np.sum(a.astype(np.float64) ** 2))
    return {"argmax_agreement": agree / total if total else float("nan"),
            "rel_l2": float(np.sqrt(err / norm)) if norm else float("nan"), "inputs": len(inputs)}


def quantize_dynamic_onnx(
    fp32_onnx: str | Path,
    out: str | Path,
    *,
    per_channel: bool = False,
    op_types_to_quantize: Sequence[str] | None = None,
    check_inputs: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """ORT dynamic quantization of ``fp32_onnx`` to ``out`` (QUInt8 weights); returns metadata.

    The FP32 model goes through ORT pre-processing first so BatchNormalization is folded into
    the convolutions before their weights are quantized. The result must load and run on ORT's
    CPU provider or this raises `QuantError`. ``check_inputs`` (e.g. calibration arrays) are
    used to measure parity against FP32; without them one seeded random input only proves
    that the model runs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if not fp32_onnx.is_file():
        raise QuantError(f"FP32 ONNX '{fp32_onnx}' not found; export it first with quant.export.export_onnx")
    started = time.perf_counter()
    _, dims = input_spec(onnx.load(str(fp32_onnx), load_external_data=False))
    with tempfile.TemporaryDirectory(prefix="edgezoo-dyn-") as tmp_dir:
        tmp = Path(tmp_dir)
        pre = tmp / "fp32_pre.onnx"
        ort_pre_process(fp32_onnx, pre)
        result = tmp / "dyn.onnx"
        quantize_dynamic(str(pre), str(result), weight_type=QuantType.QUInt8, per_channel=per_channel,
                         op_types_to_quantize=list(op_types_to_quantize) if op_types_to_quantize else None)
        onnx.checker.check_model(str(result))
        proto = drop_unused_opsets(onnx.load(str(result)))
        compacted = compact_int8_model(proto)
        onnx.checker.check_model(proto)
        opset = onnx_opset(proto)
        onnx.save(proto, str(result))
        try:
            _ort_session(result)
        except Exception as exc:  # onnxruntime raises its own exception types (NOT_IMPLEMENTED, ...)
            raise QuantError(f"the dynamically quantized model does not load on ONNX Runtime CPU: "
                             f"{str(exc).splitlines()[0]}; use static quantization for CNNs") from None
        if check_inputs is None:
            if any(d is None for d in dims):
                raise QuantError("the FP32 ONNX input has dynamic dimensions; pass check_inputs")
            inputs = [np.random.default_rng(0).standard_normal(dims).astype(np.float32)]
            check = {**parity(fp32_onnx, result, inputs), "inputs_kind": "random normal"}
        else:
            check = {**parity(fp32_onnx, result, list(check_inputs)), "inputs_kind": "given"}
        with atomic_path(out) as tmp_out:
            onnx.save(proto, str(tmp_out))
    graph = inspect_onnx(out)
    parent_bytes = fp32_onnx.stat().st_size
    meta = {
        "variant": "dynamic",
        "runtime": "onnxruntime",
        "format": "IntegerOps",
        "weight_type": "QUInt8",
        "weight_type_why": "ORT's CPU ConvInteger is fast only for u8 weights; s8 weights fail to load "
                           "on older ORT (NOT_IMPLEMENTED) and ran ~2.9x slower on ORT 1.32",
        "activation_type": "QUInt8 (computed per tensor at run time by DynamicQuantizeLinear)",
        "per_channel": bool(per_channel),
        "op_types_to_quantize": list(op_types_to_quantize) if op_types_to_quantize else "all supported by ORT",
        "int8_ops": {"ConvInteger": graph["conv_integer"], "MatMulInteger": graph["matmul_integer"]},
        "float_convs": graph["float_convs"],
        "note": "dynamic INT8 convolutions run on ORT's generic ConvInteger kernel (no optimised path): "
                "smaller file, usually slower than FP32 (microsoft/onnxruntime#12854)",
        "parity": check,
        "compacted": compacted,
        "opset": opset,
        "parent": {"path": str(fp32_onnx), "sha256": sha256_file(fp32_onnx), "bytes": parent_bytes},
        "versions": library_versions(),
        "path": str(out),
        "sha256": sha256_file(out),
        "bytes": graph["file_bytes"],
        "size_ratio": graph["file_bytes"] / parent_bytes if parent_bytes else None,
        "graph": graph,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out.with_suffix(".json"), meta)
    return meta


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def quantize_dynamic_torch(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """PyTorch dynamic quantization (``torch.ao.quantization.quantize_dynamic``, qint8).

    Returns a quantized *copy* and metadata counting what was really quantized. Only Linear,
    LSTM, GRU and RNN cells are covered; convolutions stay float, and the metadata says so
    plainly instead of passing the result off as INT8.
    """
    import torch
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import quantize_dynamic

    targets = {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (docs/QUANTIZATION.md section 1);
        # it still works in the torch versions we support, and the warning is noise here.
        warnings.simplefilter("ignore")
        qmodel = quantize_dynamic(copy.deepcopy(model).eval(), targets, dtype=torch.qint8)
    dynamic_types = tuple(getattr(nnqd, n) for n in ("Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell")
                          if hasattr(nnqd, n))
    int8 = sum(1 for m in qmodel.modules() if isinstance(m, dynamic_types))
    float_convs = sum(1 for m in qmodel.modules() if isinstance(m, _CONVS))
    float_linears = sum(1 for m in qmodel.modules() if type(m) in (nn.Linear, nn.LSTM, nn.GRU))
    meta: dict[str, Any] = {
        "variant": "dynamic",
        "runtime": "torch",
        "engine": torch.backends.quantized.engine,
        "torch": torch.__version__,
        "int8_modules": int8,
        "float_convs": float_convs,
        "float_linears": float_linears,
        "is_int8": int8 > 0,
    }
    if int8 == 0:
        meta["note"] = ("no Linear/LSTM layers: PyTorch dynamic quantization leaves every convolution "
                        "in float; this variant is FP32 in all but name")
    elif float_convs:
        meta["note"] = (f"only {int8} Linear/recurrent modules are INT8; {float_convs} convolutions "
                        "stay in float")
    return qmodel, meta
