"""Give the PyTorch x86 INT8 kernels non-negative activations as uint8 0..127 instead of 128..255.

QAT's symmetric activations (`quant.fx_quant`, ``scheme="symmetric"``) reach PyTorch's kernels as
``quint8`` with zero point 128, so a ReLU output of level k arrives as the byte 128 + k. fbgemm's
depthwise convolution multiplies with vpmaddubsw, which adds two u8*s8 products into a
*saturating* int16, on every x86 CPU, AVX512-VNNI included (its VNNI kernels are the GEMM
ones). Bytes above 128 times weight levels near 127 overflow that pair sum. Measured on the
CamVid FastDepthSeg QAT checkpoint (AMD EPYC, AVX512-VNNI): its 14 depthwise convolutions
computed their outputs at 12.5-18 dB SQNR against a float emulation of the same integers, the
INT8 network agreed with its own fake-quantized graph on 96.4 % of the pixels and scored 59.55
mIoU where the fake-quantized graph scored 60.52 (ONNX Runtime, from the same QDQ file: 60.41).

A tensor that cannot be negative only uses the levels 0..127 of the symmetric grid. The same
grid written as zero point 0 over 0..127 (same scale) holds exactly the same values, so the
fake-quantized graph computes the same numbers to the last bit, and the kernels get bytes up to
127: 127 * 127 * 2 = 32258 fits int16. The fix for that checkpoint: 98.95 % pixel agreement
with the fake-quantized graph and 60.31 mIoU (the torch reference conversion, simulated
quantization without these kernels, agrees on 98.9 %: the rest is FX's conversion, not them).

Only tensors that feed a depthwise convolution are re-encoded. The kernels clamp their outputs
at byte 255, not at the quantizer's 127, so a re-encoded tensor is no longer clipped where its
values exceed the trained range: on the QAT test network without depthwise convolutions,
re-encoding every non-negative tensor lowered pixel agreement with the fake-quantized graph
to 97.7 %, below the test's 98 % floor. Re-encoding all of them gave
FastDepthSeg the same result as the depthwise inputs alone (60.36 mIoU); requantizing right
before each depthwise convolution instead kept the clipping, gained nothing (60.33) and made
the network 1.6x slower.

Only the PyTorch INT8 conversion uses this (`fx_quant.convert_int8`); the QDQ ONNX files keep the
symmetric encoding that TensorRT requires, and ONNX Runtime's kernels do not saturate here.
Static PTQ uses affine activations, whose ReLU outputs already have zero point 0.

Which tensors are non-negative is read from the graph, not from observed ranges (a QAT range
calibrated with entropy starts symmetric around zero and stays so): outputs of ReLU-fused
modules and ReLU calls, and ops that keep non-negative inputs non-negative (pooling, resizing,
concatenation, addition and multiplication of non-negative tensors, shape ops).
"""
from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

# Functions and methods whose output is >= 0 whatever the input.
_RELU_FUNCTIONS = (F.relu, torch.relu, F.relu6)
_RELU_METHODS = ("relu", "relu_")
# Whose output is >= 0 when every tensor input is (pooling of / resizing / adding / concatenating
# non-negative values, plus shape-only ops).
_MONOTONE_FUNCTIONS = (
    F.interpolate, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    torch.cat, torch.concat, torch.add, operator.add, operator.iadd, torch.mul, operator.mul,
    torch.flatten, torch.reshape, torch.mean, torch.sum, operator.getitem,
)
_MONOTONE_METHODS = ("view", "reshape", "flatten", "permute", "contiguous", "mean", "sum", "add", "mul",
                     "repeat", "expand", "transpose", "__getitem__")
_SIGN_KEEPING = (torch.add, operator.add, operator.iadd, torch.mul, operator.mul, "add", "mul")
_MONOTONE_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
                     nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout2d)


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    inputs: list[torch.fx.Node] = []
    for arg in (*node.args, *node.kwargs.values()):
        if isinstance(arg, torch.fx.Node):
            inputs.append(arg)
        elif isinstance(arg, (list, tuple)):
            inputs.extend(a for a in arg if isinstance(a, torch.fx.Node))
    # Shape values (x.shape, size arguments) are not tensors of the data path.
    return [a for a in inputs if not (a.op == "call_function" and a.target is getattr) and
            not (a.op == "call_function" and a.target is operator.getitem and _is_shape(a))]


def _constants_nonneg(node: torch.fx.Node) -> bool:
    """For additions and products: no negative constant operand (x + (-1) or -2 * x can be negative)."""
    if node.target not in _SIGN_KEEPING:
        return True
    constants = [a for a in (*node.args, *node.kwargs.values()) if not isinstance(a, torch.fx.Node)]
    return all(isinstance(c, (int, float)) and c >= 0 for c in constants)


def _is_shape(node: torch.fx.Node) -> bool:
    src = node.args[0] if node.args else None
    return isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target is getattr


def _is_relu_module(module: nn.Module) -> bool:
    # nn.ReLU / ReLU6 and the fused intrinsic modules (ConvReLU2d, ConvBnReLU2d, LinearReLU, BNReLU2d
    # and their QAT forms) all end in a ReLU
    return isinstance(module, (nn.ReLU, nn.ReLU6)) or type(module).__name__.endswith(("ReLU1d", "ReLU2d", "ReLU3d",
                                                                                          "LinearReLU"))


def _is_avg_pool_wrapper(target) -> bool:
    # zoo.layers.adaptive_avg_pool, an FX-wrapped leaf function
    return getattr(target, "__name__", "") == "adaptive_avg_pool" and "zoo" in getattr(target, "__module__", "")


def nonnegative_nodes(graph_module: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """The nodes of `graph_module` whose output cannot be negative (structurally; see the module doc)."""
    nonneg: set[torch.fx.Node] = set()
    for node in graph_module.graph.nodes:  # topological order
        inputs = _tensor_inputs(node)
        all_inputs_nonneg = bool(inputs) and all(a in nonneg for a in inputs) and _constants_nonneg(node)
        if node.op == "call_module":
            # by name: a quantizer shared by several ops is listed once by `named_modules()`
            module = graph_module.get_submodule(node.target)
            if _is_relu_module(module):
                nonneg.add(node)
            elif _is_quantizer(module) or isinstance(module, _MONOTONE_MODULES):
                if all_inputs_nonneg:
                    nonneg.add(node)
        elif node.op == "call_function":
            if node.target in _RELU_FUNCTIONS:
                nonneg.add(node)
            elif (node.target in _MONOTONE_FUNCTIONS or _is_avg_pool_wrapper(node.target)) and all_inputs_nonneg:
                nonneg.add(node)
        elif node.op == "call_method":
            if node.target in _RELU_METHODS:
                nonneg.add(node)
            elif node.target in _MONOTONE_METHODS and all_inputs_nonneg:
                nonneg.add(node)
    return nonneg


def _is_quantizer(module: nn.Module) -> bool:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    return isinstance(module, (ObserverBase, FakeQuantizeBase))


def _is_depthwise(graph_module: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op != "call_module":
        return False
    module = graph_module.get_submodule(node.target)
    groups = getattr(module, "groups", 1)
    return isinstance(module, nn.modules.conv._ConvNd) and groups > 1 and groups == module.in_channels


def _is_symmetric_act_quantizer(module: nn.Module) -> bool:
    from torch.ao.quantization import FakeQuantize

    return (isinstance(module, FakeQuantize) and module.dtype == torch.quint8
            and module.qscheme == torch.per_tensor_symmetric and int(module.zero_point.reshape(-1)[0]) == 128)


@torch.no_grad()
def reencode_nonnegative(prepared: torch.fx.GraphModule) -> list[str]:
    """Rewrite, in place, every symmetric uint8 activation fake quantizer (zero point 128) that
    feeds a depthwise convolution and whose input is non-negative at all its uses into zero point
    0 over 0..127 with the same scale, and return their names. The fake-quantized values do not change; `convert_fx` then gives the
    INT8 kernels bytes 0..127 for those tensors (why: the module doc)."""
    nonneg = nonnegative_nodes(prepared)
    # By module, not by name: ops that share their input's qparams (resizing, pooling,
    # concatenation) reuse one quantizer under several names.
    uses: dict[int, tuple[str, list[bool], list[bool]]] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.args and isinstance(node.args[0], torch.fx.Node):
            module = prepared.get_submodule(node.target)
            name, nonneg_inputs, feeds_depthwise = uses.setdefault(id(module), (node.target, [], []))
            nonneg_inputs.append(node.args[0] in nonneg)
            feeds_depthwise.append(any(_is_depthwise(prepared, user) for user in node.users))
    changed = []
    for name, nonneg_inputs, feeds_depthwise in uses.values():
        module = prepared.get_submodule(name)
        if not all(nonneg_inputs) or not any(feeds_depthwise) or not _is_symmetric_act_quantizer(module):
            continue
        scale = module.scale.detach().clone()
        observer = module.activation_post_process
        # convert_fx takes its qparams from the observer: make it encode (scale, 0) over 0..127
        observer.qscheme, observer.quant_min, observer.quant_max = torch.per_tensor_affine, 0, 127
        observer.min_val = torch.zeros_like(observer.min_val)
        observer.max_val = (scale.reshape(()) * 127).to(observer.max_val.dtype)
        module.qscheme, module.quant_min, module.quant_max = torch.per_tensor_affine, 0, 127
        module.is_per_channel = False
        module.zero_point.zero_()
        got_scale, got_zp = observer.calculate_qparams()
        # 127 * s / 127 may differ from s in the last bit of a float32, nothing more
        if int(got_zp.reshape(-1)[0]) != 0 or not torch.allclose(got_scale.reshape(-1), scale.reshape(-1), rtol=1e-6):
            raise RuntimeError(f"re-encoding {name} gave scale {got_scale}, zero point {got_zp} for scale {scale}")
        changed.append(name)
    return changed
