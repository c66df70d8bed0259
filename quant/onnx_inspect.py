"""Graph statistics of an ONNX file: what was quantized and what still runs in float.

Used by the tests (no float weights left on quantized convs, symmetric zero points for
TensorRT) and stored in every quantized artifact's metadata, so a table can show *why* a variant
is as large or as slow as it is.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INTEGER_OPS = ("QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul")
_INT8 = {TensorProto.INT8, TensorProto.UINT8}
_FLOAT = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_INT32 = {TensorProto.INT32}
# Ops that move or reshape data, or do dynamic-quantization bookkeeping: not "compute left in float".
_NOT_COMPUTE = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast", "Shape",
                "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Constant",
                "Gather", "Slice"}


def _dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers plus Constant-node tensors, by name."""
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
    return consts


def inspect_onnx(path: str | Path) -> dict[str, Any]:
    """Statistics of one ONNX file (JSON-serialisable).

    Keys: ``file_bytes``, ``nodes``, ``op_types`` (histogram), ``quantize_linear``,
    ``dequantize_linear``, ``qlinear_conv``, ``conv_integer``, ``matmul_integer``, ``convs``,
    ``quantized_convs`` (Conv fed a DequantizeLinear weight, QLinearConv, ConvInteger),
    ``float_convs`` (Conv whose weight is a float initializer not behind a DequantizeLinear),
    ``zero_points_all_zero`` (None without Q/DQ; True when every Q/DQ zero point is 0, i.e.
    symmetric), ``qdq_dtypes`` (types of the Q/DQ zero points and dequantized constants),
    ``weight_dtypes`` (8-bit types of quantized weight tensors), ``initializer_bytes``
    ({int8, float, int32, other}), ``int8_weight_fraction`` (int8 bytes over int8 + float bytes),
    ``float_compute_ops`` (compute nodes none of whose inputs come from a DequantizeLinear or an
    integer op: float on every backend), ``dq_only_ops`` (compute nodes fed by a
    DequantizeLinear whose outputs are not all re-quantized: ONNX Runtime's CPU provider fuses
    only DQ -> op -> Q groups, so it runs these in float; TensorRT still fuses weighted ones
    into INT8 kernels).
    """
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    consts = _constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    ops = Counter(node.op_type for node in graph.node)

    float_convs = quantized_convs = 0
    for node in graph.node:
        if node.op_type in ("QLinearConv", "ConvInteger"):
            quantized_convs += 1
        elif node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            src = producer.get(node.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                quantized_convs += 1
            elif node.input[1] in consts and consts[node.input[1]].data_type in _FLOAT:
                float_convs += 1

    zero_points: list[bool] = []
    qdq_types: set[str] = set()
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zp_name is None:
            zero_points.append(True)  # absent zero point means 0
        elif zp_name in consts:
            zp = consts[zp_name]
            zero_points.append(bool(np.all(numpy_helper.to_array(zp) == 0)))
            qdq_types.add(_dtype_name(zp.data_type))
        else:
            zero_points.append(False)  # computed at run time: cannot prove it is 0
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            qdq_types.add(_dtype_name(consts[node.input[0]].data_type))

    weight_types: set[str] = set()
    for node in graph.node:  # 8-bit constants consumed as weights (QDQ, QOperator or IntegerOps)
        if node.op_type in ("DequantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"):
            for name in node.input:
                if name in consts and consts[name].data_type in _INT8 and len(consts[name].dims) > 1:
                    weight_types.add(_dtype_name(consts[name].data_type))

    sizes = {"int8": 0, "float": 0, "int32": 0, "other": 0}
    for t in consts.values():
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if t.data_type in _INT8:
            sizes["int8"] += n
        elif t.data_type in _FLOAT:
            sizes["float"] += n * (2 if t.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16)
                                   else 8 if t.data_type == TensorProto.DOUBLE else 4)
        elif t.data_type in _INT32:
            sizes["int32"] += 4 * n
        else:
            sizes["other"] += len(t.raw_data) if t.raw_data else n * 8

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    fed_int = set(QDQ_OPS[1:]) | set(INTEGER_OPS) | {"DynamicQuantizeLinear"}
    float_compute: Counter[str] = Counter()
    dq_only: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in _NOT_COMPUTE or node.op_type in INTEGER_OPS:
            continue
        inputs = [i for i in node.input if i and i not in consts]
        if not any(producer.get(i) is not None and producer[i].op_type in fed_int for i in inputs):
            float_compute[node.op_type] += 1
        elif not all(o not in graph_outputs and consumers.get(o)
                     and all(c.op_type == "QuantizeLinear" for c in consumers[o]) for o in node.output):
            dq_only[node.op_type] += 1

    weight_bytes = sizes["int8"] + sizes["float"]
    return {
        "file_bytes": path.stat().st_size,
        "nodes": len(graph.node),
        "op_types": dict(sorted(ops.items())),
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "qlinear_conv": ops.get("QLinearConv", 0),
        "conv_integer": ops.get("ConvInteger", 0),
        "matmul_integer": ops.get("MatMulInteger", 0),
        "convs": ops.get("Conv", 0) + ops.get("ConvTranspose", 0) + ops.get("QLinearConv", 0)
        + ops.get("ConvInteger", 0),
        "quantized_convs": quantized_convs,
        "float_convs": float_convs,
        "zero_points_all_zero": all(zero_points) if zero_points else None,
        "qdq_dtypes": sorted(qdq_types),
        "weight_dtypes": sorted(weight_types),
        "initializer_bytes": sizes,
        "int8_weight_fraction": sizes["int8"] / weight_bytes if weight_bytes else 0.0,
        "float_compute_ops": dict(sorted(float_compute.items())),
        "dq_only_ops": dict(sorted(dq_only.items())),
    }
