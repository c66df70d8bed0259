"""Static post-training quantization of an FP32 ONNX file to a QDQ INT8 ONNX file.

Two targets from the same calibration data:

* ``target="ort"`` - ONNX Runtime on the CPU. ORT pre-processing first (symbolic shape inference,
  Conv+BN fusion; "we can not quantize BatchNormalization by itself"), then QDQ with per-channel
  weights and the type combination that is fastest on *this* CPU (see `ort_types`). ORT fuses
  DequantizeLinear -> op -> QuantizeLinear into QLinearConv / QLinearAdd / ... at session creation.
* ``target="trt"`` - TensorRT explicit quantization (docs/QUANTIZATION.md section 3): symmetric
  INT8 activations and weights (zero point 0, which TensorRT requires), per-channel weights,
  opset 17, Q/DQ only on the *inputs* of the ops TensorRT runs in INT8, float biases.

The artifact is written atomically with a JSON sidecar (``out.with_suffix(".json")``) holding the
metadata this function returns: parent hash, calibration identity, settings, library versions,
result hash and graph statistics (`quant.onnx_inspect`).
"""
from __future__ import annotations

import contextlib
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from quant.calibrate import PERCENTILE, CalibrationData, CalibrationReader, QuantError, calibration_method
from quant.onnx_inspect import inspect_onnx
from quant.qdq_onnx import compact_int8_model
from zoo.hardware import cpu_flags
from zoo.io import atomic_path, sha256_file, write_json

TARGETS = ("ort", "trt")
OPSET = 17
# Images per ORT calibration pass: the histogram calibrators (entropy, percentile) keep every
# intermediate tensor of a pass in memory (~100+ MB per 360x480 image for DDRNet-23-slim).
CALIB_CHUNK = 4

# TensorRT runs these in INT8 when their inputs carry Q/DQ; weighted ops first (TensorRT
# developer guide, "Q/DQ layer-placement recommendations": quantize all inputs of weighted ops
# and the residual input of element-wise additions so the add fuses into the convolution).
# Left out on purpose:
# * Resize (DDRNet's are bilinear): removing Q/DQ around a linear Resize is not numerically
#   equivalent (microsoft/onnxruntime#22089), and TensorRT runs resize -> Q/DQ -> conv in INT8
#   on its own (NVIDIA/TensorRT#2976).
# * BatchNormalization (pre-activation BN in DDRNet's DAPPM, not fusable into a preceding conv):
#   TensorRT fuses it into a scale layer; Q/DQ around it would only add re-quantizations.
# * Relu / Concat: TensorRT fuses Relu into the conv and propagates Q/DQ across concat.
TRT_OP_TYPES = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
                "GlobalAveragePool"]
# "Don't quantize the outputs of weighted ops" (same guide): the next consumer's input Q/DQ
# does it, and an extra Q/DQ between a conv and its Relu / residual add blocks the fusions.
TRT_NO_OUTPUT_QUANT = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"]
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# ORT's CPU provider has no INT8 BatchNormalization kernel: a quantized BN (DDRNet's
# pre-activation BNs, which pre-processing cannot fold into a conv) still runs as
# DequantizeLinear -> float BN -> QuantizeLinear, so quantizing it would only round its scale and
# bias to 8 bits (per tensor: ORT warns that per-channel axis 1 does not exist on the rank-1
# scale) for no speed gain. The ORT default rewrites such BNs as depthwise convs first
# (`bn_as_conv`), so this only matters when that rewrite is off.
ORT_SKIP_OP_TYPES = {"BatchNormalization"}


def ort_op_types() -> list[str]:
    """Op types quantized for the ORT target: everything ORT can quantize, less `ORT_SKIP_OP_TYPES`."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - ORT_SKIP_OP_TYPES)


def cpu_has_vnni(flags: set[str] | None = None) -> bool:
    """An 8-bit dot-product instruction: AVX512-VNNI / AVX-VNNI on x86, SDOT/UDOT (asimddp) on ARM."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})


def ort_types(vnni: bool | None = None) -> dict[str, Any]:
    """Activation / weight types and reduce_range for ORT's CPU kernels on this machine.

    U8S8 (uint8 activations, int8 weights) is the combination MLAS has its fastest QLinearConv
    kernels for. Without VNNI those kernels multiply with pmaddubsw, which adds two u8*s8
    products into a *saturating* int16: with full 8-bit weights the sum can overflow and
    silently clip, so weights are quantized to 7 bits (reduce_range=True) to keep every pair
    sum in range (docs/QUANTIZATION.md section 2, ORT quantize_static docstring). VNNI
    (vpdpbusd) accumulates straight into int32, so full 8-bit weights are safe and more accurate.
    """
    vnni = cpu_has_vnni() if vnni is None else vnni
    return {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": not vnni,
            "cpu_vnni": vnni}


def input_spec(proto: onnx.ModelProto) -> tuple[str, list[int | None]]:
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise QuantError(f"expected an ONNX graph with one input, got {len(inputs)}; export the "
                         "network with quant.export.export_onnx")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def output_head_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes from each graph output back to, and including, the nearest weighted op.

    For a segmentation network that is the classifier conv and the final upsampling: the
    logits. Quantizing them to 8 bits (and then upsampling 8-bit logits) creates arg-max ties
    and flips, for almost no speed gain (a 1x1 conv to a handful of classes).
    """
    producer = {out: node for node in proto.graph.node for out in node.output}
    constants = {t.name for t in proto.graph.initializer}
    names: list[str] = []
    seen: set[int] = set()
    stack = [o.name for o in proto.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name:
            names.append(node.name)
        if node.op_type not in WEIGHTED_OPS:
            stack.extend(i for i in node.input if i and i not in constants)
    return names


def reduce_sum_producers(proto: onnx.ModelProto) -> list[str]:
    """Names of the element-wise nodes (Mul, Add) whose output a ReduceSum sums: kept in float so
    the sum gets float input (PIDNet's attention: a channel dot product of two feature maps).

    OpenVINO's CPU plugin (2026.4) runs a ReduceSum fed by DequantizeLinear in u8 and gets it
    wrong: PIDNet-S's static file scored 2.4 mIoU on OpenVINO (24 % pixel agreement with FP32)
    and 65.40 on ONNX Runtime; with float ReduceSum inputs, 97.7 % on OpenVINO and unchanged
    99.7 % on ONNX Runtime (NOTES.md, session 18). Quantizing per-element products to 8 bits
    before summing them is a weak scheme anyway, and the products are cheap."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    names = []
    for node in proto.graph.node:
        if node.op_type == "ReduceSum" and node.input:
            src = producer.get(node.input[0])
            if src is not None and src.op_type in ("Mul", "Add") and src.name and src.name not in names:
                names.append(src.name)
    return names


def check_calibration_shape(fp32: onnx.ModelProto, calib: CalibrationData) -> str:
    """The model's input name; raises when calibration arrays do not fit its static input shape."""
    name, dims = input_spec(fp32)
    shape = tuple(calib.arrays[0].shape) if calib.arrays else ()
    if len(dims) == 4 and all(d is not None for d in dims[2:]) and tuple(dims[2:]) != shape[2:]:
        raise QuantError(f"calibration images are {shape[2]}x{shape[3]} but the ONNX input is "
                         f"{dims[2]}x{dims[3]}; build the calibration with input_hw=({dims[2]}, {dims[3]})")
    return name


def library_versions() -> dict[str, str]:
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _calib_chunk(n: int) -> int:
    # ORT's strided calibration needs a stride that divides the number of images.
    return max(d for d in range(1, min(CALIB_CHUNK, n) + 1) if n % d == 0)


def ort_pre_process(src: Path, dst: Path, *, bn_as_conv: bool = False) -> dict[str, list[str]]:
    """ORT's quantization pre-processing (shape inference, Conv+BN folding) of ``src`` into ``dst``.

    ``bn_as_conv`` (the ONNX Runtime target's graph rewrites, `quant.onnx_rewrites`) then rewrites
    the BatchNormalizations no convolution precedes as 1x1 depthwise convolutions, so ORT runs them
    in INT8 instead of as float islands, and the padded AveragePools as the depthwise convolutions
    they are, which OpenVINO (running the same file) pads correctly; returns the names of the
    rewritten nodes by rewrite (``bn_as_depthwise_conv``, ``avgpool_as_depthwise_conv``).
    """
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as exc:  # ORT raises plain Exceptions from shape inference / optimisation
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise QuantError(f"ONNX Runtime pre-processing of '{src}' failed: {type(exc).__name__}: {first}; "
                         "re-export the model with a static input shape (quant.export.export_onnx)") from None
    rewritten: dict[str, list[str]] = {"bn_as_depthwise_conv": [], "avgpool_as_depthwise_conv": []}
    if not bn_as_conv:
        return rewritten
    from quant.onnx_rewrites import batchnorm_as_depthwise_conv, padded_average_pools_as_depthwise_conv

    proto, rewritten["bn_as_depthwise_conv"] = batchnorm_as_depthwise_conv(onnx.load(str(dst)))
    proto, rewritten["avgpool_as_depthwise_conv"] = padded_average_pools_as_depthwise_conv(proto)
    if any(rewritten.values()):
        onnx.save(proto, str(dst))
    return rewritten


def drop_unused_opsets(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove opset imports of domains no node uses (ORT's optimizer lists all of its own:
    com.microsoft, com.microsoft.nchwc, ...), so other parsers such as TensorRT's see a plain
    ONNX opset-17 model."""
    used = {n.domain for n in proto.graph.node} | {"", "ai.onnx"}
    keep = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    return proto


def onnx_opset(proto: onnx.ModelProto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def quantize_static_onnx(
    fp32_onnx: str | Path,
    out: str | Path,
    calib: CalibrationData,
    *,
    target: str = "ort",
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool | None = None,
    op_types_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    extra_options: dict[str, Any] | None = None,
    float_head: bool | None = None,
    calibration_cache: str | Path | None = None,
    pre_processed: bool = False,
    bn_as_conv: bool | None = None,
    compact_names: bool = True,
) -> dict[str, Any]:
    """Quantize ``fp32_onnx`` into a QDQ INT8 ONNX at ``out``; returns (and writes) its metadata.

    ``target``: "ort" (ONNX Runtime CPU: U8S8, reduce_range decided from the CPU's VNNI support
    unless given) or "trt" (TensorRT: symmetric S8S8, float biases, Q/DQ on op inputs only).
    ``method``: calibration method, "minmax" | "percentile" | "entropy".
    ``op_types_to_quantize`` / ``nodes_to_exclude`` / ``extra_options`` go to ORT's
    ``quantize_static`` (defaults: `ort_op_types()` for "ort", `TRT_OP_TYPES` for "trt").
    ``float_head`` leaves `output_head_nodes` (classifier conv, final upsampling) unquantized so
    the logits stay float; default True for "ort" (for "trt" the logits are float anyway: no
    output Q/DQ on convs).
    ``calibration_cache``: a JSON file of calibrated ranges (ORT's ``calibration_cache_path``),
    written on first use and reused after, so repeated quantizations of one model (the
    sensitivity search) calibrate once. ``pre_processed``: ``fp32_onnx`` already went through
    `ort_pre_process` (node names in ``nodes_to_exclude`` then refer to it unchanged).
    ``bn_as_conv``: pre-processing writes stand-alone BatchNormalizations as 1x1 depthwise convs
    so they run in INT8 (`quant.onnx_rewrites`); default True for "ort" (measured ~5 % faster on
    DDRNet-23-slim, `python -m bench.ort_study`), False for "trt" (TensorRT fuses a BN into a scale
    layer itself). Ignored when ``pre_processed``: the caller's `ort_pre_process` decided.
    ``compact_names``: write the compact deployable file (`quant.qdq_onnx.compact_int8_model`:
    short tensor names, BN statistics folded, zero weight zero points dropped); False keeps ORT's `<tensor>_DequantizeLinear_Output` names, which its per-layer error tools
    (`quant.sensitivity.layer_errors`) match on.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if target not in TARGETS:
        raise QuantError(f"unknown quantization target {target!r}; valid targets: {', '.join(TARGETS)}")
    calibrate_method = calibration_method(method)
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if not fp32_onnx.is_file():
        raise QuantError(f"FP32 ONNX '{fp32_onnx}' not found; export it first with quant.export.export_onnx")
    if calib.size == 0:
        raise QuantError("calibration data is empty; build it with quant.calibrate.build_calibration")
    parent = onnx.load(str(fp32_onnx))
    input_name = check_calibration_shape(parent, calib)

    options: dict[str, Any] = {"CalibStridedMinMax": _calib_chunk(calib.size)}
    if str(method).lower() == "percentile":
        # ORT's default, named here so that PyTorch FX's percentile observer cuts at the same one.
        options["CalibPercentile"] = PERCENTILE
    if target == "ort":
        types = ort_types()
        if reduce_range is not None:
            types["reduce_range"] = bool(reduce_range)
        op_types = list(op_types_to_quantize) if op_types_to_quantize else ort_op_types()
    else:
        types = {"activation_type": "QInt8", "weight_type": "QInt8", "reduce_range": False}
        if reduce_range:
            raise QuantError("reduce_range is a CPU (non-VNNI) workaround; TensorRT needs full-range "
                             "symmetric INT8, so leave reduce_range unset for target='trt'")
        op_types = list(op_types_to_quantize) if op_types_to_quantize else list(TRT_OP_TYPES)
        options.update({
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            # ORT would quantize biases to INT32 behind a DequantizeLinear; TensorRT only
            # dequantizes 8-bit tensors and fuses the float bias into the INT8 conv itself.
            "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": list(TRT_NO_OUTPUT_QUANT),
        })
    options.update(extra_options or {})
    keep_head_float = (target == "ort") if float_head is None else bool(float_head)
    bn_as_conv = (target == "ort") if bn_as_conv is None else bool(bn_as_conv)
    rewritten: dict[str, list[str]] = {}

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgezoo-ptq-") as tmp_dir:
        tmp = Path(tmp_dir)
        pre = fp32_onnx if pre_processed else tmp / "fp32_pre.onnx"
        if not pre_processed:
            rewritten = ort_pre_process(fp32_onnx, pre, bn_as_conv=bn_as_conv)
        excluded = list(nodes_to_exclude or [])
        pre_proto = onnx.load(str(pre))
        # ORT ignores names it does not know: a list made for another export would silently
        # quantize everything.
        unknown = [n for n in excluded if n not in {node.name for node in pre_proto.graph.node}]
        if unknown:
            raise QuantError(f"{len(unknown)} of the {len(excluded)} nodes to keep in float are not in the "
                             f"pre-processed graph of '{fp32_onnx}' (e.g. {unknown[:3]}); the list was made "
                             "for another model, input size or export")
        if keep_head_float:
            excluded += [n for n in output_head_nodes(pre_proto) if n not in excluded]
        float_reduce = reduce_sum_producers(pre_proto) if target == "ort" else []
        excluded += [n for n in float_reduce if n not in excluded]
        result = tmp / "int8.onnx"
        # ORT's histogram calibrators print progress to stdout; keep stdout for our callers' output.
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(pre), str(result), CalibrationReader(calib, input_name),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                reduce_range=types["reduce_range"],
                activation_type=getattr(QuantType, types["activation_type"]),
                weight_type=getattr(QuantType, types["weight_type"]),
                nodes_to_exclude=excluded,
                calibrate_method=calibrate_method,
                extra_options=options,
                calibration_cache_path=str(calibration_cache) if calibration_cache else None,
            )
        proto = drop_unused_opsets(onnx.load(str(result)))
        compacted = compact_int8_model(proto, keep_weight_zero_points=target == "trt") if compact_names else None
        onnx.checker.check_model(proto)
        opset = onnx_opset(proto)
        if target == "trt":
            if opset != OPSET:
                raise QuantError(f"the TensorRT artifact came out at opset {opset}, not {OPSET}; "
                                 f"export the FP32 model at opset {OPSET}")
            custom = sorted({n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
            if custom:
                raise QuantError(f"the TensorRT artifact contains ONNX Runtime-only ops {custom}; "
                                 "quantize a plain opset-17 export (quant.export.export_onnx)")
        with atomic_path(out) as tmp_out:
            onnx.save(proto, str(tmp_out))
    seconds = time.perf_counter() - started

    graph = inspect_onnx(out)
    parent_bytes = fp32_onnx.stat().st_size
    meta = {
        "variant": "static",
        "target": target,
        "format": "QDQ",
        "method": str(method).lower(),
        "per_channel": bool(per_channel),
        "activation_type": types["activation_type"],
        "weight_type": types["weight_type"],
        "reduce_range": bool(types["reduce_range"]),
        "cpu_vnni": types.get("cpu_vnni"),
        "symmetric_activations": target == "trt" or bool(options.get("ActivationSymmetric", False)),
        "op_types_to_quantize": op_types,
        "float_head": keep_head_float,
        "bn_as_depthwise_conv": rewritten.get("bn_as_depthwise_conv", []),
        "avgpool_as_depthwise_conv": rewritten.get("avgpool_as_depthwise_conv", []),
        "compacted_names": compacted,
        "nodes_to_exclude": excluded,
        "float_reduce_inputs": float_reduce,
        "extra_options": options,
        "opset": opset,
        "ir_version": proto.ir_version,
        "parent": {"path": str(fp32_onnx), "sha256": sha256_file(fp32_onnx), "bytes": parent_bytes},
        "calibration": calib.as_dict(),
        "versions": library_versions(),
        "path": str(out),
        "sha256": sha256_file(out),
        "bytes": graph["file_bytes"],
        "size_ratio": graph["file_bytes"] / parent_bytes if parent_bytes else None,
        "graph": graph,
        "seconds": round(seconds, 2),
    }
    write_json(out.with_suffix(".json"), meta)
    return meta
