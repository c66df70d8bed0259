"""PyTorch INT8 through FX graph mode: QAT preparation, PTQ calibration, real INT8 kernels, QDQ export.

One quantization scheme serves three consumers, so that a QAT-trained network means the same
numbers everywhere:

* **Weights:** per-channel symmetric INT8 (zero point 0, levels -127..127), what TensorRT
  requires and what fbgemm/x86 and ONNX Runtime's QLinearConv run fastest. On x86 CPUs without
  AVX512-VNNI both CPU runtimes multiply with vpmaddubsw, which adds two u8*s8 products into a
  *saturating* int16; with uint8 activations around zero point 128 (below) and weights near 127
  that pair sum overflows on most pixels. There QAT trains weights on -64..64 instead
  (`weight_range`, `int8_pairs_saturate`): 255 * 64 * 2 = 32640 fits int16 for any activation.
* **Activations (QAT, `scheme="symmetric"`):** per-tensor symmetric. PyTorch's quantized CPU
  kernels only take uint8 activations, so they are expressed as `quint8` with zero point 128:
  levels 0..255 around 128 are exactly the int8 levels -128..127 with the same scale. The
  TensorRT flavour of the exported ONNX rewrites them to int8 / zero point 0 (`to_trt_qdq`), an
  exact re-encoding (TensorRT only accepts symmetric int8 Q/DQ, docs/QUANTIZATION.md section 3).
* **Activations (PyTorch static PTQ, `scheme="affine"`):** per-tensor affine uint8, which uses
  the full range after ReLUs, observed as the calibration method says (`activation_observer`):
  minmax, percentile (the same cut as ONNX Runtime's, `PercentileObserver`) or entropy (torch's
  HistogramObserver, an L2 search rather than ORT's KL divergence). Weights are per-channel
  min/max for every method, as in ONNX Runtime, whose methods only calibrate activations.

Why FX graph mode and not the torchao PT2E flow: PT2E needs `torchao` (not a dependency here) and
`torch.compile` with a C++ toolchain at inference time; FX ships with torch, fuses Conv-BN(-ReLU)
into QAT modules that support freezing BN statistics, and converts to the fbgemm/x86 quantized
kernels, which ran DDRNet-23-slim ~2x faster than FP32 eager on this CPU (see NOTES.md).

The FX graph is traced with the module's `training` flag of the moment, so networks with
auxiliary training heads are built with ``aux=False`` before preparation. Modules whose Python
shape logic FX cannot trace declare ``fx_leaf = True`` (YOLOv5's box decode): they stay one
float call in every graph here, and check `training` when run (`fx_leaf_classes`).
"""
from __future__ import annotations

import copy
import operator
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import MinMaxObserver

SCHEMES = ("symmetric", "affine")
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127  # symmetric range: TensorRT's weight convention
# Weight levels whose u8*s8 pair sums cannot saturate int16 for *any* uint8 activation:
# 255 * 64 * 2 = 32640 <= 32767 (ONNX Runtime's reduced int8 range is the same -64..64).
REDUCED_WEIGHT_QMIN, REDUCED_WEIGHT_QMAX = -64, 64
WEIGHT_RANGES = {"full": (WEIGHT_QMIN, WEIGHT_QMAX), "reduced": (REDUCED_WEIGHT_QMIN, REDUCED_WEIGHT_QMAX)}
INT16_MAX = 32767
ENGINE = "x86"

_X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def int8_pairs_saturate(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """Whether this CPU's INT8 convolution kernels add u8*s8 products pairwise into a saturating int16.

    That is x86 without AVX512-VNNI: fbgemm (PyTorch's x86 / fbgemm engines) and ONNX Runtime's
    MLAS multiply with vpmaddubsw there, whose pair sum clips at +-32767, and 255 * 127 * 2
    overflows it; VNNI's vpdpbusd accumulates into int32. fbgemm has AVX512-VNNI kernels only,
    so a CPU with AVX-VNNI alone, which `quant.ptq_static.cpu_has_vnni` counts (MLAS uses it),
    still saturates in PyTorch: `cpu_has_vnni` is the ORT test, not this one. The instruction is
    x86's, so other machines answer False; unknown flags on x86 (no /proc/cpuinfo) count as
    saturating, the safe answer. fbgemm's *depthwise* kernels use vpmaddubsw even with
    AVX512-VNNI; `convert_int8` keeps their inputs below byte 128 instead
    (`quant.x86_depthwise`).
    """
    import platform

    from zoo.hardware import cpu_flags

    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in _X86_MACHINES:
        return False
    flags = cpu_flags() if flags is None else flags
    return "avx512_vnni" not in flags


def weight_range(choice: str = "auto", *, flags: set[str] | None = None,
                 machine: str | None = None) -> tuple[str, tuple[int, int]]:
    """Resolve a QAT weight range: "full" (-127..127), "reduced" (-64..64), or "auto": reduced where
    this CPU's INT8 kernels saturate (`int8_pairs_saturate`), so that the INT8 artifacts made and
    measured here compute what the fake-quantized graph trained. Returns (name, (qmin, qmax))."""
    if choice == "auto":
        choice = "reduced" if int8_pairs_saturate(flags, machine) else "full"
    if choice not in WEIGHT_RANGES:
        raise ValueError(f"unknown weight range {choice!r}; valid: auto, {', '.join(WEIGHT_RANGES)}")
    return choice, WEIGHT_RANGES[choice]


def _weight_observer(fake: bool, qrange: tuple[int, int] = (WEIGHT_QMIN, WEIGHT_QMAX)) -> Callable[..., Any]:
    from torch.ao.quantization import FakeQuantize, MovingAveragePerChannelMinMaxObserver, PerChannelMinMaxObserver

    qmin, qmax = qrange
    if not -128 <= qmin < 0 < qmax <= 127:
        raise ValueError(f"weight range {qrange} is not a symmetric int8 range")
    kwargs = dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=qmin, quant_max=qmax, ch_axis=0)
    if fake:
        return FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, **kwargs)
    return PerChannelMinMaxObserver.with_args(**kwargs)


def qconfig_mapping(*, qat: bool, scheme: str = "symmetric", reduce_range: bool = False,
                    weight_qrange: tuple[int, int] = (WEIGHT_QMIN, WEIGHT_QMAX), calib_method: str = "entropy"):
    """The QConfigMapping for `prepare_qat_fx` (qat=True) or `prepare_fx` (PTQ).

    `reduce_range` (7-bit activations) is for CPUs without VNNI, where fbgemm's u8*s8 pair sums
    can saturate int16; it is only meaningful for the affine PTQ scheme, whose activations then
    stay below 128. The symmetric scheme keeps 8-bit activations around zero point 128 and
    restricts the weights instead (`weight_qrange`, see `weight_range`). `calib_method` chooses
    the PTQ activation observer (`activation_observer`); QAT learns its ranges and ignores it.
    """
    from torch.ao.quantization import (FakeQuantize, MovingAverageMinMaxObserver, QConfig,
                                       get_default_qat_qconfig_mapping, get_default_qconfig_mapping)

    if scheme not in SCHEMES:
        raise ValueError(f"unknown activation scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if scheme == "symmetric":
        # No explicit quant_min/max: with the default quint8 range the observer picks zero point
        # 128 for a symmetric scheme (a customised range would give 127 and break the int8 mapping).
        act_kwargs: dict[str, Any] = dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric)
    else:
        act_kwargs = dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=reduce_range)
    if qat:
        act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **act_kwargs)
        base = get_default_qat_qconfig_mapping(ENGINE)
    else:
        act = activation_observer(calib_method).with_args(**act_kwargs)
        base = get_default_qconfig_mapping(ENGINE)
    # set_global overrides the engine's default for every op; fixed-qparams ops (sigmoid,
    # hardsigmoid, softmax) keep their mandatory configs from `base`.
    return base.set_global(QConfig(activation=act, weight=_weight_observer(qat, tuple(weight_qrange))))


def activation_observer(calib_method: str) -> type:
    """The PTQ activation observer class for a calibration method ("minmax", "percentile", "entropy").

    * minmax: `MinMaxObserver`, the global min and max over all calibration images, as ORT's
      MinMax calibrator (not the moving average that torch's defaults use).
    * percentile: `PercentileObserver`, the cut ORT's Percentile calibrator makes.
    * entropy: torch's `HistogramObserver`. It searches the histogram for the range that minimises
      the L2 norm of the quantization error, which is *not* ORT's Entropy calibrator (KL
      divergence between the float and the quantized distribution): both clip outliers by looking
      at the whole histogram, so the name maps here, but the two backends' "entropy" ranges differ.
    """
    from torch.ao.quantization import HistogramObserver

    observers = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "entropy": HistogramObserver}
    method = str(calib_method).lower()
    if method not in observers:
        raise ValueError(f"unknown calibration method {calib_method!r}; valid methods: {', '.join(observers)}")
    return observers[method]


class PercentileObserver(MinMaxObserver):
    """Per-tensor range cut at a percentile of |x|, the way ONNX Runtime's Percentile calibrator cuts it.

    ORT (`CalibrationMethod.Percentile`, defaults) histograms |x| over all calibration tensors in
    2048 bins, growing the histogram by whole bins of the same width when a later batch reaches
    further, takes the threshold t where the cumulative count reaches 99.999 %, and calibrates
    (-t, t) clamped to the observed (min, max). This observer does the same with
    `quant.calibrate.PERCENTILE` and `PERCENTILE_BINS`, so "percentile" means one range on both
    backends, up to one bin (1/2048 of max|x|): ORT reads the threshold at the left edge of the
    bin where the count crosses, this at its right edge, so that a tensor whose values almost all
    fall into the first bin is not cut to zero. When growth would make the histogram more than
    `MAX_BIN_FACTOR` times its starting size, neighbouring bins are merged (coarser, same origin)
    so memory stays bounded; ORT does not merge, which only matters after such extreme growth.

    The cut range is stored in `min_val` / `max_val` after every batch, so the state dict that
    `quant.torch_ptq` saves is MinMaxObserver's and converts to the same qparams; the histogram
    itself is calibration-time state and not saved.
    """

    MAX_BIN_FACTOR = 16

    def __init__(self, percentile: float | None = None, bins: int | None = None, **kwargs: Any) -> None:
        from quant.calibrate import PERCENTILE, PERCENTILE_BINS

        super().__init__(**kwargs)
        self.percentile = float(PERCENTILE if percentile is None else percentile)
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must lie in (0, 100], got {self.percentile}")
        self.bins = int(PERCENTILE_BINS if bins is None else bins)
        self.bin_width = 0.0  # 0 until a batch with a non-zero value fixes the resolution
        self.zeros_before_histogram = 0
        self.register_buffer("abs_histogram", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.register_buffer("seen_min", torch.tensor(float("inf")), persistent=False)
        self.register_buffer("seen_max", torch.tensor(float("-inf")), persistent=False)

    @torch.no_grad()
    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float()
        lo, hi = torch.aminmax(x)
        self.seen_min.copy_(torch.minimum(self.seen_min, lo))
        self.seen_max.copy_(torch.maximum(self.seen_max, hi))
        self._add_to_histogram(x.abs(), max(-float(lo), float(hi)))
        t = self.threshold()
        self.min_val.copy_(torch.maximum(self.seen_min, torch.tensor(-t)))
        self.max_val.copy_(torch.minimum(self.seen_max, torch.tensor(t)))
        return x_orig

    def _add_to_histogram(self, absx: torch.Tensor, amax: float) -> None:
        if self.bin_width == 0.0:
            if amax == 0.0:  # no scale yet: count the zeros, they go into the first bin later
                self.zeros_before_histogram += absx.numel()
                return
            self.bin_width = amax / self.bins
            self.abs_histogram = torch.zeros(self.bins, dtype=torch.float64)
            self.abs_histogram[0] += self.zeros_before_histogram
        elif amax >= self.abs_histogram.numel() * self.bin_width:
            self._grow(int(amax // self.bin_width) + 1)
        top = self.abs_histogram.numel() * self.bin_width
        self.abs_histogram += torch.histc(absx, bins=self.abs_histogram.numel(), min=0.0, max=top).double()

    def _grow(self, bins: int) -> None:
        """Extend the histogram to `bins` bins of the current width, merging neighbours when that
        exceeds `MAX_BIN_FACTOR` times the starting size."""
        hist = torch.cat([self.abs_histogram, self.abs_histogram.new_zeros(bins - self.abs_histogram.numel())])
        limit = self.bins * self.MAX_BIN_FACTOR
        if bins > limit:
            merge = -(-bins // self.bins)  # ceil: back to about the starting number of bins
            hist = torch.cat([hist, hist.new_zeros(-bins % merge)]).reshape(-1, merge).sum(dim=1)
            self.bin_width *= merge
        self.abs_histogram = hist

    def threshold(self) -> float:
        """max|x| kept: the right edge of the bin where the cumulative count reaches the percentile."""
        total = float(self.abs_histogram.sum())
        if total == 0.0:  # nothing observed, or only zeros so far
            return 0.0
        cdf = torch.cumsum(self.abs_histogram, dim=0) / total
        idx = int(torch.searchsorted(cdf, torch.tensor([self.percentile / 100.0], dtype=torch.float64))[0])
        return min(idx + 1, self.abs_histogram.numel()) * self.bin_width

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, bins={self.bins}, " + super().extra_repr()


def example_input(batch: int, input_hw: tuple[int, int]) -> torch.Tensor:
    # Two images: BatchNorm in training mode refuses one value per channel (pooled branches).
    return torch.randn(max(2, batch), 3, *input_hw)


def prepare(model: nn.Module, *, qat: bool, input_hw: tuple[int, int] = (64, 64), scheme: str = "symmetric",
            reduce_range: bool = False, weight_qrange: tuple[int, int] = (WEIGHT_QMIN, WEIGHT_QMAX),
            calib_method: str = "entropy", float_ops: Sequence[str] | None = None) -> torch.fx.GraphModule:
    """Trace `model` and insert fake quantizers (QAT) or observers (PTQ, chosen by `calib_method`,
    see `activation_observer`). The input is not modified.

    `float_ops` (kinds of `FLOAT_OPS`; default: the network's own `fx_float_ops`, see
    `float_op_kinds`) run in float: every such op of the graph is a float island (`keep_float`).

    `weight_qrange` is not stored in a state dict: a checkpoint must be rebuilt with the range it
    was trained with (`quant.qat` records it). Likewise a PTQ observer state only loads into the
    observers of the method it was calibrated with (`quant.torch_ptq` records it)."""
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    model = copy.deepcopy(model)
    split_relu6(model)
    float_ops = resolve_float_ops(model, float_ops)
    mapping = qconfig_mapping(qat=qat, scheme=scheme, reduce_range=reduce_range, weight_qrange=weight_qrange,
                              calib_method=calib_method)
    for kind in float_ops:
        for fn in _FLOAT_FUNCTIONS.get(kind, ()):
            mapping.set_object_type(fn, None)
    for name in float_scopes(model):  # every op traced inside these modules runs in float
        mapping.set_module_name(name, None)
    example = (example_input(2, input_hw),)
    if qat:
        fold_transposed_conv_bn(model)
    keep_float(model, float_ops)
    custom = _prepare_custom_config(model)
    if qat:
        prepared = prepare_qat_fx(model.train(), mapping, example_inputs=example, prepare_custom_config=custom)
    else:
        prepared = prepare_fx(model.eval(), mapping, example_inputs=example, prepare_custom_config=custom)
    if "head" in float_ops:
        float_tail(prepared)
    return prepared


def float_tail(prepared: torch.fx.GraphModule) -> list[str]:
    """Remove every observer / fake quantizer downstream of the float head convolutions (the "head"
    float op), in place, and return their names: the logits then stay float up to the output.

    Keeping the classifier conv a float leaf is not enough: FX still observes its output for the
    final bilinear upsampling (an op the x86 backend runs on quantized tensors) and the upsampled
    logits, so the INT8 model rounded the logits to 8 bits twice. On FastDepthSeg (CamVid) that
    alone cost 1.7 % pixel agreement with FP32 (98.3 %), where ONNX Runtime's float head kept
    99.4 %."""
    def module_of(node) -> nn.Module | None:
        # by name: an op that shares its input's qparams (the upsampling) has one observer module
        # under two names, and `named_modules()` lists a shared module once
        return prepared.get_submodule(node.target) if node.op == "call_module" else None

    heads = [n for n in prepared.graph.nodes if isinstance(module_of(n), (FloatConv2d, FloatConvTranspose2d))]
    downstream, stack = set(), list(heads)
    while stack:
        node = stack.pop()
        for user in node.users:
            if user not in downstream:
                downstream.add(user)
                stack.append(user)
    removed = []
    for node in [n for n in prepared.graph.nodes if n in downstream]:
        if _is_quantizer(module_of(node)):
            node.replace_all_uses_with(node.args[0])
            prepared.graph.erase_node(node)
            removed.append(node.target)
    for name in removed:
        if name not in (n.target for n in prepared.graph.nodes if n.op == "call_module"):
            prepared.delete_submodule(name)
    prepared.recompile()
    return removed


def _is_quantizer(module: nn.Module | None) -> bool:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    return isinstance(module, (ObserverBase, FakeQuantizeBase))


class FloatPReLU(nn.PReLU):
    """An `nn.PReLU` that FX quantization leaves in float (`keep_float`).

    torch's quantized PReLU kernel (x86 engine, torch 2.14, AVX2 CPU) is not trustworthy: slopes
    stored above level 127 of its quint8 weight wrap around, and even with 6-bit slopes it got
    10-14 % of ESPNet's positive inputs wrong (measured against its own dequantized arithmetic,
    NOTES.md session 8), which took the official ESPNet from 70.1 to 0 mIoU. In float the
    activation costs a dequantize / quantize pair and computes what the QDQ graph says."""

    fx_leaf = True


class FloatBatchNorm2d(nn.BatchNorm2d):
    """A standalone `nn.BatchNorm2d` (no convolution before it to fold into) whose only consumer is
    a float PReLU: computed in float together with it (`keep_float`), since quantizing its output
    would add a rounding step for a tensor that is dequantized right after. With the "batchnorm"
    float op (`FLOAT_OPS`) every standalone one is: its per-channel scale multiplies the rounding
    error of a per-tensor quantized input by up to its largest gain."""

    fx_leaf = True


class FloatConv2d(nn.Conv2d):
    """A segmentation network's classifier convolution (the "head" float op), left in float by FX
    quantization (`keep_float`) so that the logits stay float through the final upsampling and
    arg-max, as ONNX Runtime's `float_head` does (`quant.ptq_static.output_head_nodes`): 8-bit
    logits create arg-max ties and flips (FastDepthSeg: 98.6 % pixel agreement from quantizing the
    1/8-resolution logits alone) for almost no speed (a 1x1 convolution to a handful of classes)."""

    fx_leaf = True


class FloatConvTranspose2d(nn.ConvTranspose2d):
    """`FloatConv2d` for a network whose classifier is a transposed convolution."""

    fx_leaf = True


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# Op kinds a network (or a caller) may keep in float in FX INT8 graphs, besides the PReLUs that
# always are. "add" and "cat" are functions (a None qconfig in the mapping); "batchnorm" marks
# every standalone BatchNorm2d (one that follows no convolution, so nothing folds it away).
FLOAT_OPS = ("add", "cat", "batchnorm", "head")
_FLOAT_FUNCTIONS: dict[str, tuple[Callable[..., Any], ...]] = {
    "add": (operator.add, operator.iadd, torch.add), "cat": (torch.cat, torch.concat)}


def float_scopes(model: nn.Module) -> tuple[str, ...]:
    """The submodules that `model` asks to run wholly in float in its FX INT8 graphs (its class's
    `fx_float_modules`: a measured, per-network choice, e.g. PIDNet's attention fusions): every
    convolution and function traced inside them stays float, static PTQ and QAT alike."""
    names = tuple(getattr(model, "fx_float_modules", ()))
    present = dict(model.named_modules())
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"{type(model).__name__}.fx_float_modules names {missing}, which the network does not have")
    return names


def check_float_ops(kinds: Iterable[str]) -> tuple[str, ...]:
    """`kinds` validated against `FLOAT_OPS`, deduplicated in `FLOAT_OPS` order."""
    kinds = list(kinds)
    unknown = sorted(set(kinds) - set(FLOAT_OPS))
    if unknown:
        raise ValueError(f"unknown float op kind(s) {unknown}; valid: {', '.join(FLOAT_OPS)}")
    return tuple(k for k in FLOAT_OPS if k in kinds)


def float_op_kinds(model: nn.Module) -> tuple[str, ...]:
    """The op kinds `model` asks to keep in float in its FX INT8 graphs: its class's
    `fx_float_ops` (a measured, per-network choice, e.g. ESPNet's), or none."""
    return check_float_ops(getattr(model, "fx_float_ops", ()))


def int8_float_ops(model: nn.Module, *, float_head: bool) -> tuple[str, ...]:
    """The float ops of `model`'s FX INT8 graphs (static PTQ and QAT alike): its own
    (`float_op_kinds`), plus "head" for a segmentation network (`float_head`), whose logits stay
    float through the final upsampling and arg-max as in the ONNX Runtime artifacts."""
    return check_float_ops([*float_op_kinds(model), *(["head"] if float_head else [])])


def resolve_float_ops(model: nn.Module, float_ops: Sequence[str] | None) -> tuple[str, ...]:
    """`float_ops` validated, or the network's own (`float_op_kinds`) when it is None."""
    return float_op_kinds(model) if float_ops is None else check_float_ops(float_ops)


def float_module_names(model: nn.Module, float_ops: Sequence[str] | None = None) -> list[str]:
    """The modules `keep_float` runs in float in FX INT8 graphs: every `nn.PReLU`, and every
    standalone `nn.BatchNorm2d` (its input is not a convolution's output) that feeds only PReLUs,
    or every standalone one when `float_ops` (default: `float_op_kinds(model)`) has "batchnorm";
    the head convolutions with the "head" float op; and the network's own `float_scopes`.
    Empty for networks without PReLU (DDRNet, YOLOv5, ...), whose graphs it leaves unchanged."""
    all_bn = "batchnorm" in resolve_float_ops(model, float_ops)
    graph = _LeafTracer(fx_leaf_classes(model)).trace(model)
    modules = dict(model.named_modules())

    def module_of(node) -> nn.Module | None:
        return modules.get(node.target) if getattr(node, "op", None) == "call_module" else None

    names = []
    for node in graph.nodes:
        mod = module_of(node)
        if isinstance(mod, nn.PReLU):
            names.append(node.target)
        elif type(mod) is nn.BatchNorm2d:
            src = node.args[0] if node.args else None
            feeds_prelu_only = bool(node.users) and all(isinstance(module_of(u), nn.PReLU) for u in node.users)
            if (all_bn or feeds_prelu_only) and not isinstance(module_of(src), _CONV_TYPES):
                names.append(node.target)
    if "head" in resolve_float_ops(model, float_ops):
        names += _head_convs(graph, module_of)
    names += float_scopes(model)
    return list(dict.fromkeys(names))


def _head_convs(graph, module_of) -> list[str]:
    """The convolutions nearest to the graph's outputs: walking back from each output through
    anything that is not a convolution (upsampling, activations, reshapes) up to the first one."""
    found, seen = [], set()
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(module_of(node), (nn.Conv2d, nn.ConvTranspose2d)):
            found.append(node.target)
            continue
        stack.extend(a for a in node.all_input_nodes)
    return found


def float_op_nodes(model: nn.Module, float_ops: Sequence[str] | None = None) -> list[str]:
    """The FX graph nodes that `float_ops` (default: `float_op_kinds(model)`) put in float: the
    sums and concatenations by their traced names ("add_3", "cat"), the BatchNorms by module name."""
    kinds = resolve_float_ops(model, float_ops)
    functions = {fn for k in kinds for fn in _FLOAT_FUNCTIONS.get(k, ())}
    graph = _LeafTracer(fx_leaf_classes(model)).trace(model)
    names = [n.name for n in graph.nodes if n.op == "call_function" and n.target in functions]
    if "batchnorm" in kinds:
        modules = dict(model.named_modules())
        names += [n for n in float_module_names(model, kinds) if type(modules[n]) is nn.BatchNorm2d
                  or isinstance(modules[n], FloatBatchNorm2d)]
    if "head" in kinds:
        modules = dict(model.named_modules())
        names += [n for n in float_module_names(model, kinds) if isinstance(modules[n], _CONV_TYPES)]
    return names


def split_relu6(model: nn.Module) -> list[str]:
    """Replace, in place, every `nn.ReLU6` of `model` by ReLU then Hardtanh(0, 6) (the same function)
    and return the names replaced.

    Why: FX has no Conv-BN-ReLU6 fusion and makes ReLU6 share its input's quantizer, so the output
    of MobileNetV2's conv + BN + ReLU6 was quantized on the range of the signed BN output: about
    half of the 8-bit levels unused, and (symmetric QAT) bytes 128..255 into fbgemm's saturating
    depthwise kernels (`quant.x86_depthwise`). Split, the ReLU fuses into the convolution, whose
    output quantizer then spans only [0, max]; the clip at 6 shares it, as ReLU6 did. ReLU6 has no
    parameters, so FP32 state dicts load unchanged; QAT and observer states follow the new graph."""
    replaced = []
    for parent_name, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.ReLU6:
                setattr(module, name, nn.Sequential(nn.ReLU(inplace=child.inplace),
                                                    nn.Hardtanh(0.0, 6.0, inplace=child.inplace)))
                replaced.append(f"{parent_name}.{name}" if parent_name else name)
    return replaced


def keep_float(model: nn.Module, float_ops: Sequence[str] | None = None) -> list[str]:
    """Mark the modules of `float_module_names` as float islands, in place, and return their names.

    Each becomes its `fx_leaf` twin (`FloatPReLU`, `FloatBatchNorm2d`): same parameters, buffers
    and state-dict keys, but no quantization pattern matches the subclass, so FX dequantizes
    before it and the next quantized op quantizes after it, in QAT, PTQ, the INT8 kernels and the
    exported QDQ graph alike."""
    names = float_module_names(model, float_ops)
    twins = {nn.PReLU: FloatPReLU, nn.BatchNorm2d: FloatBatchNorm2d, nn.Conv2d: FloatConv2d,
             nn.ConvTranspose2d: FloatConvTranspose2d}
    for name in names:
        mod = model.get_submodule(name)
        mod.__class__ = twins.get(type(mod), type(mod))
    return names


def fx_leaf_classes(model: nn.Module) -> list[type]:
    """Module classes in `model` that declare `fx_leaf = True` (YOLOv5's `BoxDecode`).

    The module twin of `torch.fx.wrap` (`zoo.layers.adaptive_avg_pool`): FX records each call as
    one node instead of tracing into Python-side shape logic it cannot trace symbolically.
    Quantization matches no pattern on such a node, so it runs in float: its quantized inputs are
    dequantized before it, and it decides at call time what `self.training` means.
    """
    return list(dict.fromkeys(type(m) for m in model.modules() if getattr(type(m), "fx_leaf", False)))


def _prepare_custom_config(model: nn.Module):
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    return PrepareCustomConfig().set_non_traceable_module_classes(fx_leaf_classes(model))


class _LeafTracer(torch.fx.Tracer):
    """A plain FX tracer that also keeps the `fx_leaf` module classes as leaves."""

    def __init__(self, leaves: list[type]):
        super().__init__()
        self.leaves = tuple(leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)


@torch.no_grad()
def fold_transposed_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a ConvTranspose2d into it, in place; returns the count.

    FX QAT has no fused ConvTranspose-BN module ("not yet supported in QAT"), so these BNs (ESPNet's
    decoder) are folded with their FP32 running statistics before preparation and stay frozen
    during fine-tuning; the deconvolution then trains with a fake-quantized folded weight.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    graph = _LeafTracer(fx_leaf_classes(model)).trace(model)
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (getattr(src, "op", None) != "call_module" or not isinstance(modules.get(src.target), nn.ConvTranspose2d)
                or len(src.users) != 1):
            continue
        conv, bn = modules[src.target], modules[node.target]
        fused = fuse_conv_bn_eval(conv.eval(), bn.eval(), transpose=True)
        _set_submodule(model, src.target, fused)
        _set_submodule(model, node.target, nn.Identity())
        folded += 1
    return folded


@torch.no_grad()
def calibrate(prepared: nn.Module, batches: Iterable[np.ndarray | torch.Tensor]) -> int:
    """Run `batches` through the prepared model in eval mode so its observers record ranges."""
    prepared.eval()
    n = 0
    for batch in batches:
        prepared(torch.as_tensor(batch))
        n += 1
    return n


QAT_CALIB_METHODS = ("mean-minmax", "minmax", "percentile", "entropy")
# What "auto" tries (`choose_qat_start`): minmax is never better than mean-minmax for a range start.
QAT_START_CANDIDATES = ("mean-minmax", "entropy", "percentile")


@torch.no_grad()
def calibrate_qat(prepared: nn.Module, batches: Iterable[np.ndarray | torch.Tensor], method: str = "mean-minmax") -> int:
    """Start a QAT graph's quantizer ranges from calibration images instead of the first training
    batches, in eval mode (BN running statistics; training mode restored afterwards). Returns the
    image count.

    * ``mean-minmax``: observers on, each moving-average observer's averaging constant set to 1/k
      at the k-th image, so that its range is the plain mean of the per-image min/max (constants
      restored afterwards).
    * ``minmax``, ``percentile``, ``entropy``: the per-tensor activation ranges a static PTQ of
      that method would choose (`activation_observer`, float activations: fake quantization off
      while observing). Each activation quantizer gets those scale and zero point, and its
      moving-average observer is set to the same range, so that training starts from the PTQ
      graph and any later observer update moves from there. Weights start as in mean-minmax.
    """
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    if method not in QAT_CALIB_METHODS:
        raise ValueError(f"unknown QAT calibration method {method!r}; valid: {', '.join(QAT_CALIB_METHODS)}")
    quantizers = [m for m in prepared.modules()
                  if isinstance(m, FakeQuantizeBase) and hasattr(m.activation_post_process, "averaging_constant")]
    per_tensor = (torch.per_tensor_affine, torch.per_tensor_symmetric)
    # PTQ-method ranges: a side observer fed by a pre-hook sees each quantizer's float input while
    # the quantizer itself passes it through (observer and fake quantization off). Swapping the
    # quantizer's own observer would not do: the fused quantizer (FusedMovingAvgObsFakeQuantize)
    # reads its observer's moving-average state in every forward.
    side: dict[FakeQuantizeBase, nn.Module] = {}
    hooks = []
    if method != "mean-minmax":
        observer_cls = activation_observer(method)
        for fq in quantizers:
            own = fq.activation_post_process
            if own.qscheme not in per_tensor:
                continue  # per-channel weight quantizers
            kwargs: dict[str, Any] = dict(dtype=own.dtype, qscheme=own.qscheme, reduce_range=own.reduce_range)
            if own.has_customized_qrange:
                kwargs.update(quant_min=own.quant_min, quant_max=own.quant_max)
            side[fq] = observer = observer_cls(**kwargs).to(fq.scale.device)
            hooks.append(fq.register_forward_pre_hook(lambda _m, args, obs=observer: obs(args[0].detach())))
    averaged = [fq.activation_post_process for fq in quantizers if fq not in side]
    saved = [o.averaging_constant for o in averaged]
    flags_was = {fq: (bool(fq.fake_quant_enabled[0]), bool(fq.observer_enabled[0])) for fq in side}
    for fq in side:
        fq.disable_fake_quant()
        fq.disable_observer()
    was_training = prepared.training
    prepared.eval()
    n = 0
    try:
        for batch in batches:
            for o in averaged:
                o.averaging_constant = 1.0 / (n + 1)
            prepared(torch.as_tensor(batch))
            n += 1
    finally:
        for hook in hooks:
            hook.remove()
        for o, c in zip(averaged, saved):
            o.averaging_constant = c
        for fq, observer in side.items():
            if n:
                _start_from(fq, *observer.calculate_qparams())
            fake_quant, observing = flags_was[fq]
            if fake_quant:
                fq.enable_fake_quant()
            if observing:
                fq.enable_observer()
        prepared.train(was_training)
    return n


def _is_logits(t: torch.Tensor) -> bool:
    """Segmentation logits (N, C > 1, H, W), or their (N, H, W) integer arg-max masks."""
    return (t.dim() == 4 and t.shape[1] > 1) or (t.dim() == 3 and not t.is_floating_point())


@torch.no_grad()
def output_fidelity(reference: torch.Tensor, output: torch.Tensor) -> float:
    """How close a quantized graph's output is to the float one, higher is better: for logits
    (N, C > 1, H, W) the share of pixels whose arg-max agrees (what mIoU follows; `reference` may
    be the float arg-max masks themselves); otherwise the SQNR in dB (a detector's raw output)."""
    if _is_logits(reference):
        labels = reference.argmax(1) if reference.dim() == 4 else reference  # or already arg-max masks
        return float((labels == output.argmax(1)).float().mean())
    noise = (reference - output).float().pow(2).sum()
    return float(10 * torch.log10(reference.float().pow(2).sum() / noise.clamp_min(1e-20)))


@torch.no_grad()
def choose_qat_start(float_model: nn.Module, prepared: nn.Module, batches: Sequence[np.ndarray | torch.Tensor],
                     candidates: Sequence[str] = QAT_START_CANDIDATES) -> tuple[str, dict[str, float]]:
    """Calibrate a QAT graph with the start method whose fake-quantized outputs on the calibration
    images themselves are closest to `float_model`'s (`output_fidelity`); returns (method, score
    of each). Training images only: nothing is chosen on the split that is reported.

    Why: QAT fine-tuning rarely beats its calibrated start on a checkpoint selected at a validation
    peak (the start stays best.pt), so the start is the result, and no one method starts best for
    every network: on CamVid (25 val images, agreement with FP32) entropy gave 99.6 % where
    mean-minmax gave 98.7 % for PP-LiteSeg-T, PIDNet-S and DDRNet-23-slim, and mean-minmax was the
    better start for FastDepthSeg (98.8 % vs 98.5 %) and ESPNet (99.1 % vs 99.0 %)."""
    import copy

    from torch.ao.quantization import disable_observer

    if not candidates:
        raise ValueError("choose_qat_start needs at least one candidate method")
    float_model = float_model.eval()
    # Logits are kept as their arg-max masks (32 of them at 360x480: 5 MB instead of 240 MB).
    references = [float_model(torch.as_tensor(b)) for b in batches]
    references = [r.argmax(1) if r.dim() == 4 and r.shape[1] > 1 else r for r in references]
    scores: dict[str, float] = {}
    best_state, best = None, None
    for method in candidates:
        trial = copy.deepcopy(prepared)
        calibrate_qat(trial, batches, method)
        state = copy.deepcopy(trial.state_dict())  # the ranges, before scoring runs the graph
        trial.eval()
        trial.apply(disable_observer)  # scoring must not move the ranges it scores
        values = [output_fidelity(ref, trial(torch.as_tensor(b))) for ref, b in zip(references, batches)]
        scores[method] = float(np.mean(values))
        if best is None or scores[method] > scores[best]:  # ties keep the earlier candidate
            best, best_state = method, state
    prepared.load_state_dict(best_state)
    return best, scores


def _start_from(fq: nn.Module, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
    """Set a per-tensor fake quantizer to (scale, zero_point) and its moving-average observer to the
    range those encode, from which the observer's own qparams come out the same."""
    obs = fq.activation_post_process
    scale = scale.to(fq.scale.device, fq.scale.dtype).reshape(fq.scale.shape)
    zero_point = zero_point.to(fq.zero_point.device, fq.zero_point.dtype).reshape(fq.zero_point.shape)
    fq.scale.copy_(scale)
    fq.zero_point.copy_(zero_point)
    qmin, qmax = obs.quant_min, obs.quant_max
    if obs.qscheme == torch.per_tensor_symmetric:
        half = scale * (qmax - qmin) / 2  # the observer divides max(|min|, max) by (qmax - qmin) / 2
        lo, hi = -half, half
    else:
        lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    obs.min_val = lo.detach().reshape(()).to(obs.min_val.dtype).clone()  # buffers: assignment re-registers
    obs.max_val = hi.detach().reshape(()).to(obs.max_val.dtype).clone()


def freeze_bn_stats(model: nn.Module) -> None:
    """Stop updating BatchNorm running statistics in the fused QAT Conv-BN modules (and plain BNs)."""
    import torch.ao.nn.intrinsic.qat as nniqat

    model.apply(nniqat.freeze_bn_stats)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def freeze_observers(model: nn.Module) -> None:
    """Fix every quantizer's scale and zero point (fake quantization stays on)."""
    from torch.ao.quantization import disable_observer

    model.apply(disable_observer)


def convert_int8(prepared: nn.Module, *, warn: bool = True) -> nn.Module:
    """Real INT8 kernels (fbgemm / x86 engine) from a calibrated or QAT-trained prepared model.

    QAT weights get exactly the integers their fake quantizers used: `convert_fx` rounds them
    into the full int8 range, so a folded weight beyond the frozen range (the fake quantizer
    clips it) is clamped back here. fbgemm's depthwise kernels saturate in int16 even with
    AVX512-VNNI (`quant.x86_depthwise`): their non-negative symmetric inputs reach them as bytes
    0..127 rather than 128..255, and the other depthwise convolutions get 7-bit weights. With
    `warn`, says so when the result can saturate on this CPU (`saturation_hazard`)."""
    import warnings

    from torch.ao.quantization.quantize_fx import convert_fx

    from quant.x86_depthwise import narrow_depthwise_weights, reencode_nonnegative

    if ENGINE in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = ENGINE
    model = copy.deepcopy(prepared).eval()
    reencoded = reencode_nonnegative(model)
    int8 = convert_fx(model)  # rewrites `model`'s graph in place: read the float graph from `prepared`
    _clamp_int8_weights(int8, prepared)
    narrow_depthwise_weights(int8, prepared, reencoded)
    if warn and (hazard := saturation_hazard(prepared)):
        warnings.warn(hazard, RuntimeWarning, stacklevel=2)
    return int8


def _weight_qranges(prepared: nn.Module) -> dict[str, tuple[int, int]]:
    """Module name -> (quant_min, quant_max) of each QAT weight fake quantizer."""
    return {name: (int(m.weight_fake_quant.quant_min), int(m.weight_fake_quant.quant_max))
            for name, m in prepared.named_modules() if hasattr(m, "weight_fake_quant")}


@torch.no_grad()
def _clamp_int8_weights(int8_model: nn.Module, prepared: nn.Module) -> int:
    """Clamp the packed INT8 weights of converted modules to their QAT quantizer's range; returns
    how many modules changed."""
    ranges = _weight_qranges(prepared)
    changed = 0
    for name, mod in int8_model.named_modules():
        if name not in ranges or not hasattr(mod, "set_weight_bias") or not callable(getattr(mod, "weight", None)):
            continue
        qmin, qmax = ranges[name]
        w = mod.weight()
        ints = w.int_repr()
        if int(ints.min()) >= qmin and int(ints.max()) <= qmax:
            continue
        ints = ints.clamp(qmin, qmax)
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            w = torch._make_per_channel_quantized_tensor(ints, w.q_per_channel_scales(), w.q_per_channel_zero_points(),
                                                         w.q_per_channel_axis())
        else:
            w = torch._make_per_tensor_quantized_tensor(ints, w.q_scale(), w.q_zero_point())
        mod.set_weight_bias(w, mod.bias())
        changed += 1
    return changed


def max_weight_level(prepared: nn.Module) -> int:
    """The largest |weight level| any QAT weight quantizer of `prepared` allows (0 without any)."""
    return max((max(-lo, hi) for lo, hi in _weight_qranges(prepared).values()), default=0)


def saturation_hazard(prepared: nn.Module, *, flags: set[str] | None = None, machine: str | None = None) -> str | None:
    """Why the INT8 kernels of this CPU can compute something else than `prepared`, or None.

    Saturation needs both: a CPU whose kernels add u8*s8 pairs in int16 (`int8_pairs_saturate`)
    and, in one pair, activations above 127 with weight levels above 64. Activations stay below
    128 when every activation quantizer's quant_max is at most 127 (the affine PTQ scheme with
    `reduce_range`); weights stay within +-64 with the reduced QAT range.
    """
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase

    if not int8_pairs_saturate(flags, machine):
        return None
    weight_level = max_weight_level(prepared)
    if not weight_level:  # PTQ: weights observed at conversion over the full symmetric range
        weight_level = WEIGHT_QMAX
    act_qmax = max((int(m.quant_max) for n, m in prepared.named_modules()
                    if isinstance(m, (FakeQuantizeBase, ObserverBase)) and not n.endswith("weight_fake_quant")
                    and getattr(m, "dtype", None) == torch.quint8), default=0)
    if 2 * act_qmax * weight_level <= INT16_MAX:
        return None
    return (f"this CPU's INT8 kernels add u8*s8 products pairwise into a saturating int16 (x86 without "
            f"AVX512-VNNI), and this model has weight levels up to {weight_level} with activations up to "
            f"{act_qmax}: its INT8 outputs will differ from the fake-quantized graph. Re-run QAT here "
            f"(python -m quant.qat chooses weights within +-{REDUCED_WEIGHT_QMAX} on such CPUs), or run the "
            f"artifact on a CPU with AVX512-VNNI")


@torch.no_grad()
def int8_layer_sqnr(prepared: nn.Module, int8_model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per module, in isolation: SQNR (dB) of each converted INT8 module (conv, conv+ReLU, BN+ReLU,
    linear) against its fake-quantized counterpart fed the *same* quantized input.

    The fake-quantized module's input (already on the previous quantizer's grid) is quantized
    with the qparams the INT8 module receives, and its output fake-quantized with the INT8
    module's output qparams, so the two differ only by rounding ties (inf or > 40 dB); a kernel
    that computes something else (int16 saturation, a wrong fold) shows up at the module that
    does it instead of being smeared over the layers after it."""
    int8_mods = {n: m for n, m in int8_model.named_modules()
                 if hasattr(m, "scale") and hasattr(m, "zero_point") and type(m).__module__.startswith("torch.ao.nn")}
    fq_mods = {n: m for n, m in prepared.named_modules() if n in int8_mods}
    seen_fq: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    seen_q: dict[str, tuple[float, int]] = {}

    def keep_fq(name: str):
        def hook(mod, args, out) -> None:  # a forward hook returning a value would replace `out`
            if name not in seen_fq and isinstance(args[0], torch.Tensor):
                seen_fq[name] = (args[0].detach(), out.detach())
        return hook

    def keep_q(name: str):
        def hook(mod, args, out) -> None:
            if name not in seen_q and isinstance(args[0], torch.Tensor) and args[0].is_quantized:
                seen_q[name] = (args[0].q_scale(), args[0].q_zero_point())
        return hook

    hooks = [m.register_forward_hook(keep_fq(n)) for n, m in fq_mods.items()]
    hooks += [int8_mods[n].register_forward_hook(keep_q(n)) for n in fq_mods]
    try:
        prepared.eval()(x)
        int8_model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    result: dict[str, float] = {}
    for name in fq_mods:
        if name not in seen_fq or name not in seen_q:
            continue
        (x_fq, y_fq), (in_scale, in_zp) = seen_fq[name], seen_q[name]
        mod = int8_mods[name]
        got = mod(torch.quantize_per_tensor(x_fq, in_scale, in_zp, torch.quint8)).dequantize()
        ref = torch.fake_quantize_per_tensor_affine(y_fq, float(mod.scale), int(mod.zero_point), 0, 255)
        result[name] = sqnr_db(ref, got)
    return result


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of `got` against `ref` in dB (inf when equal)."""
    ref, got = ref.detach().double(), got.detach().double()
    noise = float((ref - got).pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-300) / noise))


def quiet_jit_deprecation() -> None:
    """Inside a `warnings.catch_warnings()` block: hide torch's FutureWarnings that TorchScript
    (trace / freeze / save / load) is deprecated. Like FX quantization itself (NOTES.md), it still
    works in this torch; the port (torch.export / PT2E) is one known follow-up, and a warning per
    artifact and per cell would only bury the sweep's own messages."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=FutureWarning)


def save_torchscript(int8_model: nn.Module, path, example: torch.Tensor, *, runs: int = 3) -> dict[str, Any]:
    """Save a converted INT8 model (`convert_int8`) as a frozen TorchScript file that a process can
    load without FX, the float network or its observers; returns what the artifact records.

    Why: converting in the measuring process (rebuild the FP32 network, prepare, load observers,
    convert) costs more peak RAM than the FP32 model itself, and issue #3 compares INT8 RAM with
    FP32 RAM. Tracing fixes the graph at `example`'s shape (batch and input size), which is what a
    benchmark cell runs anyway; `torch.jit.freeze` turns the packed INT8 weights and qparams into
    constants. The file is loaded back here and run `runs` times (the profiling executor
    optimises the graph after its first runs) and must give the converted model's output exactly
    or within one 8-bit step of the output's range, else this raises and nothing is written.
    """
    import time
    import warnings
    from pathlib import Path

    from zoo.io import atomic_path

    path = Path(path)
    model = int8_model.eval()
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # Shape arithmetic (upsampling sizes, YOLOv5's grids) is baked in at this input size: the
        # expected TracerWarnings say so, and the parity check below is what guards the result.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        quiet_jit_deprecation()
        ref = model(example)
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    if not isinstance(ref, torch.Tensor):
        raise TypeError(f"the model returns {type(ref).__name__}, not one tensor")
    with atomic_path(path) as tmp, warnings.catch_warnings():
        quiet_jit_deprecation()
        torch.jit.save(frozen, str(tmp))
        script_s = time.perf_counter() - started
        # A locally made file (just written above), not an untrusted download.
        loaded = torch.jit.load(str(tmp), map_location="cpu")
        with torch.no_grad():
            for _ in range(max(1, runs)):
                got = loaded(example)
        if got.shape != ref.shape:
            raise RuntimeError(f"TorchScript output shape {tuple(got.shape)} != {tuple(ref.shape)}")
        diff = float((got.float() - ref.float()).abs().max()) if ref.numel() else 0.0
        # One 8-bit step over the output's range: the coarsest difference a requantization
        # boundary could explain; anything larger means the traced graph is another network.
        step = float(ref.float().max() - ref.float().min()) / 255 if ref.numel() else 0.0
        if diff > step:
            raise RuntimeError(f"TorchScript output differs from the converted model by {diff:.3g} "
                               f"(more than one 8-bit step of the output range, {step:.3g})")
    return {"script_s": round(script_s, 3), "max_abs_diff": diff, "bit_exact": diff == 0.0,
            "tolerance": step, "input_shape": list(example.shape), "runs_checked": max(1, runs)}


# --------------------------------------------------------------------------------------------
# Export: a float graph whose quantizers become ONNX QuantizeLinear / DequantizeLinear pairs.


class _ExportFakeQuant(nn.Module):
    """A frozen quantizer with Python-number qparams (per tensor) so the exporter writes scalar
    scale / zero-point constants; ONNX Runtime's QLinear* kernels require scalars."""

    def __init__(self, fq: nn.Module):
        super().__init__()
        # A FakeQuantize's scale / zero_point buffers hold the qparams of its last observed step
        # (restored from checkpoints); PTQ observers come through `_ObserverAsFakeQuant`.
        scale, zero_point = fq.scale, fq.zero_point
        self.per_channel = scale.numel() > 1 or getattr(fq, "is_per_channel", False)
        self.qmin, self.qmax = int(fq.activation_post_process.quant_min), int(fq.activation_post_process.quant_max)
        if fq.activation_post_process.dtype == torch.qint8 and -128 <= self.qmin < 0 < self.qmax <= 127:
            # ONNX export only takes the full int8 range. Symmetric weight ranges (-127..127,
            # or -64..64 on CPUs whose kernels saturate) become it: `to_export_module` has
            # clamped each weight into its quantizer's range already, so the wider clip changes
            # nothing and the int8 initializers hold exactly the trained levels.
            self.qmin, self.qmax = -128, 127
        self.axis = int(getattr(fq, "ch_axis", 0))
        if self.per_channel:
            self.register_buffer("scale", scale.detach().float().clone())
            self.register_buffer("zero_point", zero_point.detach().to(torch.int32).clone())
        else:
            self.scale_value, self.zero_point_value = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)
        return torch.fake_quantize_per_tensor_affine(x, self.scale_value, self.zero_point_value, self.qmin, self.qmax)


class _FakeQuantConv(nn.Module):
    """A convolution with BN folded in, weight fake-quantized per channel, optional fused ReLU.

    The weight is clamped into the quantizer's range first (what its fake quantization does), so
    that the exported quantizer may use the full int8 range (`_ExportFakeQuant`)."""

    def __init__(self, conv: nn.Conv2d, weight_fq: nn.Module, relu: bool):
        super().__init__()
        _clamp_to_quantizer(conv.weight, weight_fq)
        self.conv, self.weight_fq, self.relu = conv, _ExportFakeQuant(weight_fq), relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = F.conv2d(x, self.weight_fq(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)
        return F.relu(y) if self.relu else y


@torch.no_grad()
def _clamp_to_quantizer(weight: torch.Tensor, fq: nn.Module) -> None:
    """Clamp `weight` in place to [quant_min, quant_max] * scale of its per-channel fake quantizer."""
    qmin, qmax = int(fq.activation_post_process.quant_min), int(fq.activation_post_process.quant_max)
    scale = fq.scale.detach().float()
    if scale.numel() == 1:
        weight.clamp_(qmin * float(scale), qmax * float(scale))
        return
    shape = [1] * weight.dim()
    shape[int(getattr(fq, "ch_axis", 0))] = -1
    scale = scale.reshape(shape)
    weight.copy_(torch.minimum(torch.maximum(weight, qmin * scale), qmax * scale))


def _folded_conv(mod: nn.Module) -> nn.Conv2d:
    import torch.ao.nn.intrinsic.qat as nniqat

    if isinstance(mod, (nniqat.ConvBn2d, nniqat.ConvBnReLU2d)):
        # to_float() folds the BN's running statistics into the conv weight and bias, the same
        # folding the QAT forward simulates once BN statistics are frozen.
        floated = mod.to_float()
        return floated[0] if isinstance(floated, nn.Sequential) else floated
    conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                     mod.groups, bias=mod.bias is not None, padding_mode=mod.padding_mode)
    conv.weight.data.copy_(mod.weight.data)
    if mod.bias is not None:
        conv.bias.data.copy_(mod.bias.data)
    return conv


def to_export_module(prepared: nn.Module) -> nn.Module:
    """A copy of a QAT-prepared (or calibrated PTQ-prepared) model that ONNX export can trace:
    Conv-BN folded, every quantizer frozen into an `_ExportFakeQuant`."""
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.qat as nnqat
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase

    model = copy.deepcopy(prepared).eval()
    conv_types = (nniqat.ConvBn2d, nniqat.ConvBnReLU2d, nniqat.ConvReLU2d, nnqat.Conv2d)
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if isinstance(mod, conv_types):
            relu = isinstance(mod, (nniqat.ConvBnReLU2d, nniqat.ConvReLU2d))
            _set_submodule(model, name, _FakeQuantConv(_folded_conv(mod), mod.weight_fake_quant, relu))
    # remove_duplicate=False: FX shares one quantizer under several names (ops that must keep
    # the same qparams), and every name must point at the replacement.
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if isinstance(mod, FakeQuantizeBase):
            _set_submodule(model, name, _ExportFakeQuant(mod))
        elif isinstance(mod, ObserverBase):
            _set_submodule(model, name, _ExportFakeQuant(_ObserverAsFakeQuant(mod)))
    return model


class _ObserverAsFakeQuant:
    """Adapter giving a PTQ observer the attributes `_ExportFakeQuant` reads."""

    def __init__(self, obs: nn.Module):
        self.scale, self.zero_point = obs.calculate_qparams()
        self.activation_post_process = obs
        self.ch_axis = getattr(obs, "ch_axis", 0)
        self.is_per_channel = obs.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)

    def calculate_qparams(self):
        return self.scale, self.zero_point


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def count_quantizers(model: nn.Module) -> dict[str, int]:
    """How many weight and activation quantizers a prepared model holds (recorded in artifacts).

    A PTQ graph observes weights inside the graph too, so for it "activation_quantizers" counts
    every observer (weights are quantized per module at conversion)."""
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase

    weights = sum(1 for m in model.modules() if hasattr(m, "weight_fake_quant"))
    acts = sum(1 for n, m in model.named_modules()
               if isinstance(m, (FakeQuantizeBase, ObserverBase)) and not n.endswith("weight_fake_quant"))
    return {"weight_quantizers": weights, "activation_quantizers": acts}


def count_int8_modules(int8_model: nn.Module) -> dict[str, int]:
    """What a converted model (`convert_int8`) really runs: modules with INT8 weights and kernels
    (torch.ao.nn.quantized Conv2d / Linear, and the fused torch.ao.nn.intrinsic.quantized ones such
    as ConvReLU2d, which every conv + ReLU pair becomes) and convolutions left in float. Quantized
    modules without weights (Dropout, Quantize) are not compute and do not count."""
    int8 = sum(1 for m in int8_model.modules()
               if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
               and callable(getattr(m, "weight", None)))
    float_convs = sum(1 for m in int8_model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))  # twins too
    return {"int8_modules": int8, "float_convs": float_convs}


def export_qdq_onnx(prepared: nn.Module, path, *, input_hw: tuple[int, int], batch: int = 1,
                    target: str = "ort") -> dict[str, Any]:
    """Export a QAT-trained (or calibrated) prepared model to a QDQ ONNX file for `target`
    ("ort": uint8 as trained, ReLU outputs re-encoded with zero point 0 so ORT fuses them;
    "trt": symmetric int8 Q/DQ). Returns graph statistics for the artifact."""
    import tempfile
    from pathlib import Path

    import onnx

    from quant.export import export_onnx
    from quant.onnx_inspect import inspect_onnx
    from quant.qdq_onnx import (compact_int8_model, fold_weight_quantizers, padded_average_pools_as_int8_convs,
                                 relu_outputs_to_zero_point_0, standalone_batchnorms_as_int8_convs, to_trt_qdq)
    from zoo.io import atomic_path

    if target not in ("ort", "trt"):
        raise ValueError(f"unknown export target {target!r}; valid: ort, trt")
    path = Path(path)
    module = to_export_module(prepared)
    with tempfile.TemporaryDirectory(prefix="edgezoo-qdq-") as tmp:
        raw = Path(tmp) / "fakequant.onnx"
        export_onnx(module, raw, input_hw=input_hw, batch=batch)
        proto = onnx.load(str(raw))
    folded = fold_weight_quantizers(proto)
    recoded = to_trt_qdq(proto) if target == "trt" else relu_outputs_to_zero_point_0(proto)
    # TensorRT fuses a stand-alone BN into a scale layer itself; ORT would run it in float.
    qmax = max((int(m.weight_fake_quant.quant_max) for m in prepared.modules() if hasattr(m, "weight_fake_quant")),
               default=127)
    bn_convs = standalone_batchnorms_as_int8_convs(proto, qmax=qmax) if target == "ort" else []
    # OpenVINO runs the ORT file too, and pads counted-padding pools with byte 0 (quant.onnx_rewrites)
    pool_convs = padded_average_pools_as_int8_convs(proto, qmax=qmax) if target == "ort" else []
    compacted = compact_int8_model(proto, keep_weight_zero_points=target == "trt")
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return {"target": target, "folded_weights": folded, "recoded_zero_points": recoded,
            "bn_as_int8_depthwise_conv": bn_convs, "avgpool_as_int8_depthwise_conv": pool_convs,
            "compacted_names": compacted, "graph": inspect_onnx(path)}
