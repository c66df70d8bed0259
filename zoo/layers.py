"""Small shared building blocks, kept quantization-friendly.

Every block is a plain `nn.Module` tree of Conv2d / BatchNorm2d / activation children named
`conv`, `bn`, `act`, so FX quantization and Conv-BN-ReLU fusion find them by pattern, and
families whose official checkpoints use those names (ESPNet's `CBR`, `BR`, `C`) load as-is.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

ActFactory = Callable[[int], nn.Module]


def relu(channels: int) -> nn.Module:  # noqa: ARG001 - uniform factory signature
    return nn.ReLU(inplace=True)


def prelu(channels: int) -> nn.Module:
    return nn.PReLU(channels)


class ConvBNAct(nn.Module):
    """Conv2d (no bias by default) -> optional BatchNorm2d -> optional activation.

    Padding keeps the spatial size at stride 1 ("same" for odd kernels, dilation included).
    `norm=False, act=None` leaves a bare convolution; the children that are absent are not
    created, so they add no state-dict keys.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        bn_eps: float = 1e-5,
        act: ActFactory | None = relu,
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias,
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps) if norm else None
        self.act = act(out_ch) if act is not None else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class BNAct(nn.Module):
    """BatchNorm2d -> activation (ESPNet's `BR`; pre-activation blocks)."""

    def __init__(self, channels: int, *, bn_eps: float = 1e-5, act: ActFactory = relu) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=bn_eps)
        self.act = act(channels)

    def forward(self, x):
        return self.act(self.bn(x))


def init_conv_bn(root: nn.Module, *, nonlinearity: str = "relu", zero_bias: bool = True,
                 skip_prefix: str | None = None) -> None:
    """He (fan-out) init for convolutions, BN weight 1 / bias 0: the init of the ResNet-style
    real-time nets. `skip_prefix` leaves a sub-tree (e.g. a torchvision backbone) untouched."""
    for name, m in root.named_modules():
        if skip_prefix and name.startswith(skip_prefix):
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            if zero_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, bins)` that also exports to ONNX for any input size.

    The legacy exporter only handles global or evenly dividing adaptive pools; while exporting,
    an uneven pool is spelled out as slices and means over its cells (floor(i*H/b),
    ceil((i+1)*H/b)), which the static export shape fixes, so the result is exact.
    Registered with `torch.fx.wrap` as a leaf: its Python-side shape arithmetic cannot be traced
    symbolically, and FX quantization (QAT, PyTorch INT8) runs it as one float op.
    """
    if not torch.onnx.is_in_onnx_export():
        return F.adaptive_avg_pool2d(x, bins)
    return adaptive_avg_pool_by_slices(x, bins)


def adaptive_avg_pool_by_slices(x: torch.Tensor, bins: int) -> torch.Tensor:
    """The exportable spelling of `F.adaptive_avg_pool2d(x, bins)` (see `adaptive_avg_pool`)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if bins == 1:
        return torch.mean(x, dim=(2, 3), keepdim=True)
    if h % bins == 0 and w % bins == 0:
        return F.avg_pool2d(x, (h // bins, w // bins))
    rows = []
    for i in range(bins):
        r0, r1 = (i * h) // bins, -((-(i + 1) * h) // bins)
        cols = [torch.mean(x[:, :, r0:r1, (j * w) // bins:-((-(j + 1) * w) // bins)], dim=(2, 3), keepdim=True)
                for j in range(bins)]
        rows.append(torch.cat(cols, 3))
    return torch.cat(rows, 2)


torch.fx.wrap("adaptive_avg_pool")
