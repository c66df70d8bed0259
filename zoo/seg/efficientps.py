"""EfficientPS semantic branch (Mohan & Valada, IJCV 2021), edge-sized; reference only.

Only the *semantic* half of EfficientPS (no Mask R-CNN instance head, no panoptic fusion), on a small
backbone; after the paper's description and MODELS.md's notes (DeepSceneSeg/EfficientPS config and
`efficientPS.py`):

* Backbone: torchvision `efficientnet_b0` features (weights=None). B0 rather than the paper's B5 because
  it is the edge-sized member of the family (about 4 M backbone parameters instead of 28 M, at the same
  block design and the same 1/4, 1/8, 1/16, 1/32 taps). Taps: features[2] (24 ch, 1/4), features[3]
  (40, 1/8), features[5] (112, 1/16), features[8] (1280, 1/32, the final 1x1 conv, as the official
  code takes the B5 head conv).
  As in the official code (`se=False`) the squeeze-excitation blocks are **removed** (replaced by
  identity), and SiLU is replaced by LeakyReLU(0.01), the activation of the official iABN; plain
  BatchNorm stands in for in-place ABN.
* 2-way FPN, 256 channels (the paper's width; pass `fpn_channels=128` for a lighter head): a top-down
  pathway (1x1 laterals, 1/32 -> 1/4, resize + add) and a bottom-up pathway (separate 1x1 laterals,
  1/4 -> 1/32, resize + add) run in parallel; at each level their sum goes through a 3x3 DW-separable
  conv + BN + act to give P4, P8, P16, P32.
* Semantic head (128 ch, every 3x3 DW-separable: depthwise + BN + act, pointwise + BN + act):
  - DPC on P32 and on P16: separable 3x3 at dilation (1,6) -> then (1,1), (6,21), (18,15) on its output
    and (6,3) on the (18,15) output; concat the five (640) -> 1x1 -> 128.
  - LSFE on P8 and P4: two separable 3x3 (128).
  - MC (mismatch correction): two separable 3x3 (128) then bilinear x2 (to the exact size).
  - Aggregation: s32 = DPC(P32); s16 = DPC(P16) + up(s32); s8 = LSFE(P8) + MC(s16);
    s4 = LSFE(P4) + MC(s8); concat [s32, s16, s8, s4] resized to 1/4 (512 ch) -> 1x1 -> classes,
    bilinear to the input size.
* No auxiliary head. Inputs whose sides are multiples of 32 give exact maps; other multiples of 16 run
  (all resizes target exact tensor sizes, align_corners=False).

No published figures exist for this configuration: the entry's params and GMACs are counted from this
implementation (say so in `Published.source`), and the mIoU field carries the full EfficientPS
panoptic model's published figure only as context.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops.misc import SqueezeExcitation

from zoo.layers import ConvBNAct
from zoo.registry import ModelEntry, Published, register


def _act(ch: int) -> nn.Module:  # noqa: ARG001
    return nn.LeakyReLU(0.01, inplace=True)


def _up(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class SepConv(nn.Module):
    """Depthwise 3x3 (with a possibly anisotropic dilation) + BN + act, pointwise 1x1 + BN + act."""

    def __init__(self, in_ch: int, out_ch: int, dilation: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.dw = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch), _act(in_ch))
        self.pw = ConvBNAct(in_ch, out_ch, 1, act=_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class DPC(nn.Module):
    def __init__(self, in_ch: int, ch: int = 128) -> None:
        super().__init__()
        self.c1 = SepConv(in_ch, ch, (1, 6))
        self.c2 = SepConv(ch, ch, (1, 1))
        self.c3 = SepConv(ch, ch, (6, 21))
        self.c4 = SepConv(ch, ch, (18, 15))
        self.c5 = SepConv(ch, ch, (6, 3))
        self.out = ConvBNAct(ch * 5, ch, 1, act=_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)
        d = self.c4(a)
        return self.out(torch.cat([a, self.c2(a), self.c3(a), d, self.c5(d)], 1))


class LSFE(nn.Sequential):
    def __init__(self, in_ch: int, ch: int = 128) -> None:
        super().__init__(SepConv(in_ch, ch), SepConv(ch, ch))


class MC(nn.Module):
    def __init__(self, ch: int = 128) -> None:
        super().__init__()
        self.convs = nn.Sequential(SepConv(ch, ch), SepConv(ch, ch))

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return _up(self.convs(x), ref)


class TwoWayFPN(nn.Module):
    def __init__(self, in_chs: tuple[int, ...], ch: int) -> None:
        super().__init__()
        self.lat_td = nn.ModuleList(ConvBNAct(c, ch, 1, act=None) for c in in_chs)
        self.lat_bu = nn.ModuleList(ConvBNAct(c, ch, 1, act=None) for c in in_chs)
        self.out = nn.ModuleList(SepConv(ch, ch) for _ in in_chs)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(feats)
        bu = [self.lat_bu[0](feats[0])]
        for i in range(1, n):  # bottom-up: fine -> coarse
            bu.append(self.lat_bu[i](feats[i]) + _up(bu[-1], feats[i]))
        td = [self.lat_td[-1](feats[-1])]
        for i in range(n - 2, -1, -1):  # top-down: coarse -> fine
            td.insert(0, self.lat_td[i](feats[i]) + _up(td[0], feats[i]))
        return [self.out[i](bu[i] + td[i]) for i in range(n)]


class EfficientPSSemantic(nn.Module):
    TAPS = (2, 3, 5, 8)
    TAP_CHANNELS = (24, 40, 112, 1280)

    def __init__(self, *, num_classes: int = 19, fpn_channels: int = 256, head_channels: int = 128,
                 se: bool = False) -> None:
        super().__init__()
        features = torchvision.models.efficientnet_b0(weights=None).features
        for module in list(features.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.SiLU):
                    setattr(module, name, _act(0))
                elif isinstance(child, SqueezeExcitation) and not se:
                    setattr(module, name, nn.Identity())
        self.backbone = features
        self.fpn = TwoWayFPN(self.TAP_CHANNELS, fpn_channels)
        h = head_channels
        self.dpc32, self.dpc16 = DPC(fpn_channels, h), DPC(fpn_channels, h)
        self.lsfe8, self.lsfe4 = LSFE(fpn_channels, h), LSFE(fpn_channels, h)
        self.mc16, self.mc8 = MC(h), MC(h)
        self.classifier = nn.Conv2d(4 * h, num_classes, 1)
        for name, m in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        y = x
        for i, block in enumerate(self.backbone):
            y = block(y)
            if i in self.TAPS:
                feats.append(y)
        p4, p8, p16, p32 = self.fpn(feats)
        s32 = self.dpc32(p32)
        s16 = self.dpc16(p16) + _up(s32, p16)
        s8 = self.lsfe8(p8) + self.mc16(s16, p8)
        s4 = self.lsfe4(p4) + self.mc8(s8, p4)
        y = torch.cat([_up(s32, s4), _up(s16, s4), _up(s8, s4), s4], 1)
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def efficientps_b0_semantic(*, num_classes: int = 19, fpn_channels: int = 256, se: bool = False) -> nn.Module:
    return EfficientPSSemantic(num_classes=num_classes, fpn_channels=fpn_channels, se=se)


register(ModelEntry(
    name="efficientps_b0_semantic", task="segmentation", family="efficientps", builder=efficientps_b0_semantic,
    citation=("Mohan, Valada, \"EfficientPS: Efficient Panoptic Segmentation\", IJCV 2021 (arXiv:2004.02307); "
              "semantic branch only, EfficientNet-B0 backbone"),
    published=Published(
        params_m=4.97, num_classes=19, gmacs=45.2, gmacs_hw=(1024, 2048), miou=84.21,
        miou_note=("context only: full EfficientPS (B5, panoptic, extra data) Cityscapes test mIoU; "
                   "no mIoU is published for this semantic-branch/B0 configuration"),
        source="counted from this implementation (no published figure for the semantic branch with this backbone)",
    ),
    aliases=("efficientps",), recipe="efficientps",
))
