"""LiteSeg (Emara, Abd El Munim, Abbas, 2019): a light DeepLabV3+-style network, MobileNetV2 variant.

Structure of the official code (tahaemara/LiteSeg `models/liteseg_mobilenet.py`, `models/aspp.py`,
`models/separableconv.py`):

* Backbone: MobileNetV2 (torchvision, weights=None) `features`, output stride **32, undilated**,
  1280-ch output after the final 1x1 conv; low-level tensor after `features[0:4]` (24 ch, 1/4).
* DASPP on the 1280-ch map, four branches at rates 1, 3, 6, 9, each 96 ch:
  - rate 1: separable 1x1 -> BN (no ReLU);
  - rate r > 1: separable 3x3 dilation r -> BN -> separable 3x3 (dilation 1) -> BN -> ReLU;
  plus a global-pool branch (AdaptiveAvgPool 1 -> 1x1 96 -> BN -> ReLU, broadcast).
* Long residual: concat the raw 1280-ch backbone output with the five 96-ch branches (1760 ch) ->
  separable 1x1 -> 96 -> BN -> ReLU.
* Decoder: resize to the low-level map (1/4), concat the raw 24-ch low-level tensor (120 ch), two
  separable 3x3 (96) each with BN + ReLU, 1x1 (with bias) -> classes, bilinear to the input size.
* `SeparableConv2d` = depthwise conv + pointwise conv, both without bias and with NO BN between.

Deviations, by our conventions only: `align_corners=False` (the official code uses True), and every
resize targets an exact tensor size (the official one resizes to ceil(H/4)), so any input whose
sides are multiples of 32 works (360x480 also runs: its 1/32 map is 12x15).

Parameter count: MODELS.md's 4.38 M is counted from the official `RT` module, whose MobileNetV2 still
holds its ImageNet classifier (Dropout + Linear 1280->1000, 1.281 M parameters) although `forward`
never uses it. This implementation has no such dead layer, so it counts 3.10 M at 19 classes;
`Published.params_m` is that figure (4.38 M - 1.281 M), with the reason in its `source`. The MACs
are unaffected (the classifier never runs): 4.51 GMACs @512x1024.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from zoo.layers import ConvBNAct
from zoo.registry import ModelEntry, Published, register


class SeparableConv2d(nn.Module):
    """Depthwise conv (with dilation) then pointwise 1x1, no bias, no BN or activation between."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size, 1, padding, dilation, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class SepBNAct(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = SeparableConv2d(in_ch, out_ch, kernel_size, dilation)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class DASPPBranch(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, rate: int) -> None:
        super().__init__()
        if rate == 1:
            self.atrous = SepBNAct(in_ch, out_ch, 1, act=False)
            self.refine = None
        else:
            self.atrous = SepBNAct(in_ch, out_ch, 3, dilation=rate, act=False)
            self.refine = SepBNAct(out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.atrous(x)
        return self.refine(x) if self.refine is not None else x


class LiteSeg(nn.Module):
    def __init__(self, *, num_classes: int = 19, rates: tuple[int, ...] = (1, 3, 6, 9), width: int = 96) -> None:
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None).features
        self.low = features[0:4]
        self.high = features[4:]
        in_ch = 1280
        self.daspp = nn.ModuleList([DASPPBranch(in_ch, width, r) for r in rates])
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct(in_ch, width, 1))
        self.fuse = SepBNAct(in_ch + width * (len(rates) + 1), width, 1)
        self.decoder = nn.Sequential(SepBNAct(width + 24, width, 3), SepBNAct(width, width, 3))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        for name, m in self.named_modules():
            if name.startswith(("low", "high")):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low(x)
        high = self.high(low)
        size = high.shape[-2:]
        g = F.interpolate(self.global_pool(high), size=size, mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([high, *[b(high) for b in self.daspp], g], 1))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.decoder(torch.cat([y, low], 1)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def liteseg_mobilenetv2(*, num_classes: int = 19) -> nn.Module:
    return LiteSeg(num_classes=num_classes)


register(ModelEntry(
    name="liteseg_mobilenetv2", task="segmentation", family="liteseg", builder=liteseg_mobilenetv2,
    citation=("Emara, Abd El Munim, Abbas, \"LiteSeg: A Novel Lightweight ConvNet for Semantic "
              "Segmentation\", DICTA 2019 (arXiv:1912.06683)"),
    published=Published(
        params_m=3.10, num_classes=19, gmacs=4.51, gmacs_hw=(512, 1024), miou=67.81,
        miou_note="Cityscapes test (fine + coarse); 70.0 val per ZH",
        source=("tahaemara/LiteSeg README (mIoU); GMACs counted from the official code (MODELS.md). Params: "
                "MODELS.md's 4.38 M (counted, official RT module) minus the unused ImageNet classifier "
                "Linear(1280, 1000) of its MobileNetV2 (1.281 M), i.e. the parameters forward uses"),
    ),
    aliases=("liteseg", "liteseg_mobilenet"), recipe="liteseg",
))
