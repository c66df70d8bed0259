"""Keep PyTorch's x86 depthwise INT8 kernels out of int16 saturation (`fx_quant.convert_int8`).

fbgemm's depthwise convolution multiplies with vpmaddubsw, which adds two u8*s8 products into a
*saturating* int16, on every x86 CPU, AVX512-VNNI included (its VNNI kernels are the GEMM ones).
On VNNI CPUs PyTorch hands convolutions of at most 100 groups to oneDNN, which is exact (64
channels were, 128 and 384 were not), so only wider depthwise convolutions are concerned.
An activation byte b and weight levels w1, w2 overflow when b * (w1 + w2) > 32767, e.g. bytes
above 128 with levels near 127. Two measures, in this order:

1. **Non-negative inputs as bytes 0..127** (`reencode_nonnegative`). QAT's symmetric activations
   (`quant.fx_quant`, ``scheme="symmetric"``) reach the kernels as ``quint8`` with zero point 128,
   so a ReLU output of level k arrives as the byte 128 + k: the worst case. Measured on the CamVid
   FastDepthSeg QAT checkpoint (AMD EPYC, AVX512-VNNI): its 14 depthwise convolutions ran at
   12.5-18 dB SQNR against a float emulation of the same integers, the INT8 network agreed with
   its fake-quantized graph on 96.4 % of the pixels and scored 59.55 mIoU where that graph scored
   60.52 (ONNX Runtime, from the same QDQ file: 60.41). A tensor that cannot be negative only uses
   the levels 0..127 of the symmetric grid; the same grid written as zero point 0 over 0..127
   (same scale) holds exactly the same values, so the fake-quantized graph is bit-identical and
   the kernels get bytes up to 127 (127 * 127 * 2 = 32258 fits int16). FastDepthSeg: 98.95 %
   agreement with its fake-quantized graph, 60.31 mIoU (the torch reference conversion, simulated
   quantization without these kernels, agrees on 98.9 %: the rest is FX's conversion).
   Only tensors that feed a depthwise convolution are re-encoded: the kernels clamp at byte 255,
   not at the quantizer's 127, so a re-encoded tensor is no longer clipped beyond the trained
   range (re-encoding every non-negative tensor lowered the DDRNet QAT test's agreement to 97.7 %,
   below its 98 % floor; for FastDepthSeg it gave 60.36). Requantizing right before each
   depthwise convolution instead kept the clipping, gained nothing (60.33) and was 1.6x slower.
2. **Weights within +-64 for every other depthwise convolution** (`narrow_depthwise_weights`):
   255 * 64 * 2 = 32640 fits int16 for any input byte. That covers inputs that can be negative
   (EfficientPS's LeakyReLU, BiSeNetV2's linear depthwise pairs) and static PTQ's affine
   activations (ReLU outputs over the full 0..255). (MobileNetV2's ReLU6 outputs are re-encoded:
   `fx_quant.split_relu6` gives them a quantizer of their own.) Each
   channel's levels are rescaled to 7 bits, a rounding the fake-quantized graph does not make,
   against errors of 10-15 dB otherwise (random-init QAT graphs of EfficientPS-B0 and LiteSeg).
   A 384-channel depthwise conv with random weights and a signed input: 17.7 dB (QAT) / 17.5 dB
   (static) against its fake-quantized twin at full weights, 33.0 / 34.8 dB at 7 bits.
   FastDepthSeg static PTQ (release cell, CamVid val): 60.04 mIoU, 99.2 % agreement with FP32
   (60.00 before, on another machine).

Only the PyTorch INT8 conversion does this; the QDQ ONNX files keep what was trained (TensorRT
needs the symmetric encoding) and ONNX Runtime's kernels do not saturate here.

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
    # nn.ReLU, clips from zero up (ReLU6 and `fx_quant.split_relu6`'s Hardtanh(0, 6)) and the fused
    # intrinsic modules (ConvReLU2d, ConvBnReLU2d, LinearReLU, BNReLU2d and their QAT forms) all
    # end in a ReLU
    if isinstance(module, nn.Hardtanh) and module.min_val >= 0:
        return True
    return isinstance(module, nn.ReLU) or type(module).__name__.endswith(("ReLU1d", "ReLU2d", "ReLU3d", "LinearReLU"))


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


# PyTorch's x86 engine runs a quantized convolution with oneDNN when the CPU has AVX512-VNNI, the
# OS is Linux, the weights are symmetric and groups <= 100 (aten's `should_use_onednn_quant`), and
# with fbgemm otherwise: a depthwise convolution of more than 100 channels always meets fbgemm's
# depthwise kernel. (Without VNNI every convolution runs on fbgemm; there `fx_quant.weight_range`
# and static PTQ's `reduce_range` already keep all pair sums within int16.)
ONEDNN_MAX_GROUPS = 100


def _is_depthwise(graph_module: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """A depthwise convolution that fbgemm's saturating depthwise kernel computes."""
    if node.op != "call_module":
        return False
    module = graph_module.get_submodule(node.target)
    groups = getattr(module, "groups", 1)
    return (isinstance(module, nn.modules.conv._ConvNd) and groups > ONEDNN_MAX_GROUPS
            and groups == module.in_channels)


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
        if not bool(torch.isfinite(scale).all()) or float(scale.reshape(-1)[0]) <= 0:
            continue  # a quantizer that never saw data (an unused branch): nothing to re-encode
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


# Weight levels whose u8*s8 pair sums cannot saturate int16 for any uint8 activation
# (the same bound as `quant.fx_quant.REDUCED_WEIGHT_QMAX`).
SAFE_WEIGHT_LEVEL = 64


@torch.no_grad()
def narrow_depthwise_weights(int8_model: nn.Module, prepared: torch.fx.GraphModule,
                             reencoded: list[str]) -> list[str]:
    """Rescale, in place, the INT8 weights of every depthwise convolution of `int8_model` whose input
    quantizer in `prepared` is not among `reencoded` to levels within +-64 per channel (same
    values, 7-bit rounding); returns the module names changed."""
    safe_inputs = {id(prepared.get_submodule(n)) for n in reencoded}
    changed = []
    for node in prepared.graph.nodes:
        if not _is_depthwise(prepared, node):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and id(prepared.get_submodule(src.target)) in safe_inputs):
            continue
        try:
            mod = int8_model.get_submodule(node.target)
        except AttributeError:
            continue  # kept in float
        if not callable(getattr(mod, "weight", None)) or not hasattr(mod, "set_weight_bias"):
            continue
        w = mod.weight()
        if w.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric):
            continue
        ints = w.int_repr().to(torch.int32)
        peak = ints.abs().amax(dim=tuple(range(1, ints.dim()))).clamp(min=1)
        if int(peak.max()) <= SAFE_WEIGHT_LEVEL:
            continue
        factor = torch.where(peak > SAFE_WEIGHT_LEVEL, peak.double() / SAFE_WEIGHT_LEVEL, torch.ones_like(peak.double()))
        shape = (-1,) + (1,) * (ints.dim() - 1)
        levels = torch.round(ints.double() / factor.reshape(shape)).clamp(-SAFE_WEIGHT_LEVEL, SAFE_WEIGHT_LEVEL)
        scales = w.q_per_channel_scales() * factor
        narrowed = torch._make_per_channel_quantized_tensor(levels.to(torch.int8), scales,
                                                            w.q_per_channel_zero_points(), w.q_per_channel_axis())
        mod.set_weight_bias(narrowed, mod.bias())
        changed.append(node.target)
    return changed
