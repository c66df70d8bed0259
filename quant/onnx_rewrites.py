"""Exact FP32 graph rewrites for the INT8 runtimes that run our QDQ files.

ORT's CPU provider has QLinear kernels for Conv, Add, pooling and Concat, but none for
BatchNormalization. A BN that pre-processing cannot fold into a preceding convolution (DDRNet's
pre-activation BNs in DAPPM and in the segmentation head: AvgPool -> BN -> ReLU -> Conv) therefore
runs as an island of float: DequantizeLinear -> BN -> Relu -> QuantizeLinear, plus the Transposes
the NHWC layout transformer puts around every float op. `batchnorm_as_depthwise_conv` writes such a
BN as the per-channel affine map it is, a 1x1 depthwise convolution, which ORT quantizes and runs
as an NHWC QLinearConv with the ReLU fused.

Numerically this costs nothing worth naming: with per-channel symmetric weights a depthwise 1x1
kernel has one weight per channel, which quantizes exactly to +-127 times its scale, and the bias
becomes int32 at scale (input scale x weight scale). The activation after the ReLU was quantized
before the rewrite as well (the next convolution's input), so no new rounding point appears.

`padded_average_pools_as_depthwise_conv` is for OpenVINO: its CPU plugin runs an AveragePool whose
padding counts (``count_include_pad=1``, PyTorch's default) on the uint8 bytes and pads with byte
0 rather than with the zero point, so on a signed tensor (zero point 128) every window that
touches the border averages in -128 steps. DDRNet-23-slim's DAPPM pools (5/9/17 wide at 1/64
resolution) came out -15.5 dB against ONNX Runtime's arithmetic and the whole static file agreed
with FP32 on 97.6 % of the pixels (ONNX Runtime 99.65 %); an explicit Pad before the pool changes
nothing (OpenVINO folds it back). The same average as a depthwise convolution with constant
weights 1/(kh*kw) and zero padding is exact in float, quantizes exactly (one weight value per
channel: +-127 times its scale) and OpenVINO pads convolutions with the zero point: 99.67 %,
logits at 36 dB instead of 13.8. ONNX Runtime computes the same either way (99.65 %).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quant.calibrate import QuantError


def _attribute(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def batchnorm_as_depthwise_conv(proto: onnx.ModelProto, only: set[str] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """Replace every inference-mode BatchNormalization on a 4-D tensor (or those named in `only`)
    by an equivalent 1x1 depthwise Conv (in place); returns the proto and the names of the
    replaced nodes.

    Run it after ORT's pre-processing, which already folds Conv -> BN pairs into the conv: what
    is left are BNs no convolution precedes. BNs whose parameters are not constant initializers,
    or that run in training mode, are left alone.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    rank = _ranks(proto)
    replaced: list[str] = []
    for node in list(graph.node):
        if node.op_type != "BatchNormalization" or len(node.output) != 1:
            continue
        if only is not None and (node.name or node.output[0]) not in only:
            continue
        if _attribute(node, "training_mode", 0):
            continue
        x, *params = node.input[:5]
        if len(params) != 4 or not all(p in inits for p in params) or rank.get(x) not in (None, 4):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[p]).astype(np.float64) for p in params)
        eps = float(_attribute(node, "epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        channels = scale.shape[0]
        base = node.name or node.output[0]
        w_name, b_name = f"{base}_as_dwconv.weight", f"{base}_as_dwconv.bias"
        graph.initializer.extend([
            numpy_helper.from_array(scale.reshape(channels, 1, 1, 1).astype(np.float32), w_name),
            numpy_helper.from_array(shift.astype(np.float32), b_name),
        ])
        conv = helper.make_node("Conv", [x, w_name, b_name], list(node.output), name=f"{base}_as_dwconv",
                                group=channels, kernel_shape=[1, 1])
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, conv)
        replaced.append(node.name or node.output[0])
    _drop_unused_initializers(graph)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise QuantError(f"rewriting BatchNormalization as depthwise Conv produced an invalid graph: {exc}") from None
    return proto, replaced


def padded_average_pools_as_depthwise_conv(proto: onnx.ModelProto, only: set[str] | None = None
                                           ) -> tuple[onnx.ModelProto, list[str]]:
    """Replace every 2-D AveragePool that pads and counts the padding (``count_include_pad=1``,
    ``ceil_mode=0``), or those named in `only`, by the depthwise Conv that computes the same
    average (weights 1/(kh*kw), zero padding), in place; returns the proto and the names replaced.
    Why: the module doc (OpenVINO). Pools whose channel count the graph does not record are left."""
    graph = proto.graph
    channels = _channels(proto)
    replaced: list[str] = []
    for node in list(graph.node):
        if node.op_type != "AveragePool" or len(node.output) != 1:
            continue
        name = node.name or node.output[0]
        if only is not None and name not in only:
            continue
        kernel = list(_attribute(node, "kernel_shape", []))
        pads = list(_attribute(node, "pads", [0] * 2 * len(kernel)))
        if (len(kernel) != 2 or not any(pads) or not _attribute(node, "count_include_pad", 0)
                or _attribute(node, "ceil_mode", 0) or _attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")
                or any(d != 1 for d in _attribute(node, "dilations", [1, 1]))):
            continue
        c = channels.get(node.input[0])
        if not c:
            continue
        w_name = f"{name}_as_dwconv.weight"
        weight = np.full((c, 1, kernel[0], kernel[1]), 1.0 / (kernel[0] * kernel[1]), dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(weight, w_name))
        conv = helper.make_node("Conv", [node.input[0], w_name], list(node.output), name=f"{name}_as_dwconv",
                                group=c, kernel_shape=kernel, pads=pads,
                                strides=list(_attribute(node, "strides", [1, 1])))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, conv)
        replaced.append(name)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise QuantError(f"rewriting AveragePool as depthwise Conv produced an invalid graph: {exc}") from None
    return proto, replaced


def _channels(proto: onnx.ModelProto) -> dict[str, int]:
    """Channel count (dim 1) of every 4-D tensor whose shape is known, inferring shapes when the
    model records none."""
    def collect(model: onnx.ModelProto) -> dict[str, int]:
        out = {}
        for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
            dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                out[vi.name] = int(dims[1].dim_value)
        return out

    known = collect(proto)
    pools = [n.input[0] for n in proto.graph.node if n.op_type == "AveragePool"]
    if all(p in known for p in pools):
        return known
    return {**collect(onnx.shape_inference.infer_shapes(proto)), **known}


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor whose shape the model records (inputs, outputs, value_info)."""
    out: dict[str, int] = {}
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = len(vi.type.tensor_type.shape.dim)
    return out


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
