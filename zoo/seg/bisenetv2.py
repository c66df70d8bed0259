"""BiSeNetV2 (Yu et al., IJCV 2021): bilateral network with guided aggregation.

* Detail branch: wide, shallow 3x3 conv-BN-ReLU stages [64 s2, 64], [64 s2, 64, 64],
  [128 s2, 128, 128] -> 1/8.
* Semantic branch: stem (3x3 s2 16; a 1x1 8 -> 3x3 s2 16 path beside a 3x3 s2 max-pool; concat ->
  3x3 16) -> 1/4; gather-and-expansion (GE) layers with expansion 6 (the stride-2 version has two
  depthwise convs and a depthwise-separable shortcut) at 32 (1/8), 64 (1/16), 128 (1/32, 1 + 3
  layers); context embedding (CE: global average pool - BN - 1x1 - add - 3x3).
* Bilateral guided aggregation (BGA): depthwise + 1x1 and strided paths on both branches, sigmoid
  cross-gating, x4 upsampling, a 3x3 conv.
* Head: 3x3 conv (mid 1024) -> dropout -> 1x1 -> bilinear to the input size.
* Boosters (training only, 4 aux heads at 1/4, 1/8, 1/16, 1/32 of the semantic branch, loss weight
  1.0 each per the paper): 3x3 conv (128) -> dropout -> nearest x2 -> 3x3 conv (up^2 channels) ->
  1x1 -> bilinear to the input size.

Layer shapes and module names follow CoinCheung/BiSeNet `lib/models/bisenetv2.py` (the widely used
PyTorch re-implementation; head mid width 1024), including its extra ReLUs ("not shown in paper")
and the CE block's final conv with BN-ReLU.

Deviations, by our conventions only: every upsampling targets the exact size of the tensor it is
combined with (nearest, as in the reference, inside BGA; bilinear, align_corners=False, for the
logits), instead of fixed x4 / x8 factors, so inputs whose sides are not multiples of 32 also work
(360x480: detail 45x60, semantic 12x15). No ImageNet-pretrained backbone is loaded.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.layers import ConvBNAct
from zoo.registry import ModelEntry, Published, register


def _dw_bn(ch: int, out_ch: int | None = None, stride: int = 1) -> list[nn.Module]:
    out_ch = out_ch or ch
    return [nn.Conv2d(ch, out_ch, 3, stride, 1, groups=ch, bias=False), nn.BatchNorm2d(out_ch)]


class DetailBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.S1 = nn.Sequential(ConvBNAct(3, 64, 3, 2), ConvBNAct(64, 64, 3))
        self.S2 = nn.Sequential(ConvBNAct(64, 64, 3, 2), ConvBNAct(64, 64, 3), ConvBNAct(64, 64, 3))
        self.S3 = nn.Sequential(ConvBNAct(64, 128, 3, 2), ConvBNAct(128, 128, 3), ConvBNAct(128, 128, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.S3(self.S2(self.S1(x)))


class StemBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBNAct(3, 16, 3, 2)
        self.left = nn.Sequential(ConvBNAct(16, 8, 1), ConvBNAct(8, 16, 3, 2))
        self.right = nn.MaxPool2d(3, 2, 1)
        self.fuse = ConvBNAct(32, 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], 1))


class CEBlock(nn.Module):
    def __init__(self, ch: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(ch)
        self.conv_gap = ConvBNAct(ch, ch, 1)
        self.conv_last = ConvBNAct(ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_gap(self.bn(torch.mean(x, dim=(2, 3), keepdim=True)))
        return self.conv_last(feat + x)


class GELayerS1(nn.Module):
    """3x3 conv -> depthwise 3x3 expanding x6 -> 1x1 projection (BN, no ReLU) + identity -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, exp_ratio: int = 6) -> None:
        super().__init__()
        mid = in_ch * exp_ratio
        self.conv1 = ConvBNAct(in_ch, in_ch, 3)
        self.dwconv = nn.Sequential(*_dw_bn(in_ch, mid), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.conv2[1].last_bn = True
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.dwconv(self.conv1(x))) + x)


class GELayerS2(nn.Module):
    """Stride-2 GE layer: two depthwise convs (the first strided and expanding x6), 1x1 projection,
    plus a depthwise-separable strided shortcut."""

    def __init__(self, in_ch: int, out_ch: int, exp_ratio: int = 6) -> None:
        super().__init__()
        mid = in_ch * exp_ratio
        self.conv1 = ConvBNAct(in_ch, in_ch, 3)
        self.dwconv1 = nn.Sequential(*_dw_bn(in_ch, mid, stride=2))
        self.dwconv2 = nn.Sequential(*_dw_bn(mid), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.conv2[1].last_bn = True
        self.shortcut = nn.Sequential(*_dw_bn(in_ch, stride=2), nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                      nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv2(self.dwconv2(self.dwconv1(self.conv1(x))))
        return self.relu(feat + self.shortcut(x))


class SegmentBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.S1S2 = StemBlock()
        self.S3 = nn.Sequential(GELayerS2(16, 32), GELayerS1(32, 32))
        self.S4 = nn.Sequential(GELayerS2(32, 64), GELayerS1(64, 64))
        self.S5_4 = nn.Sequential(GELayerS2(64, 128), GELayerS1(128, 128), GELayerS1(128, 128),
                                  GELayerS1(128, 128))
        self.S5_5 = CEBlock(128)

    def forward(self, x: torch.Tensor):
        feat2 = self.S1S2(x)
        feat3 = self.S3(feat2)
        feat4 = self.S4(feat3)
        feat5_4 = self.S5_4(feat4)
        return feat2, feat3, feat4, feat5_4, self.S5_5(feat5_4)


class BGALayer(nn.Module):
    def __init__(self, ch: int = 128) -> None:
        super().__init__()
        self.left1 = nn.Sequential(*_dw_bn(ch), nn.Conv2d(ch, ch, 1, bias=False))
        self.left2 = nn.Sequential(nn.Conv2d(ch, ch, 3, 2, 1, bias=False), nn.BatchNorm2d(ch),
                                   nn.AvgPool2d(3, 2, 1))
        self.right1 = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))
        self.right2 = nn.Sequential(*_dw_bn(ch), nn.Conv2d(ch, ch, 1, bias=False))
        self.conv = ConvBNAct(ch, ch, 3)

    def forward(self, x_d: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        size = x_d.shape[-2:]
        right1 = F.interpolate(self.right1(x_s), size=size, mode="nearest")
        left = self.left1(x_d) * torch.sigmoid(right1)
        left2 = self.left2(x_d)
        right = left2 * torch.sigmoid(F.interpolate(self.right2(x_s), size=left2.shape[-2:], mode="nearest"))
        right = F.interpolate(right, size=size, mode="nearest")
        return self.conv(left + right)


class SegmentHead(nn.Module):
    """3x3 conv -> dropout -> [booster: nearest x2 -> 3x3 conv to up^2 channels] -> 1x1 (bias).
    The caller resizes the logits to the input size."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int, up_factor: int = 8,
                 booster: bool = False) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_ch, mid_ch, 3)
        self.drop = nn.Dropout(0.1)
        self.booster = booster
        mid2 = up_factor * up_factor if booster else mid_ch
        self.conv_up = ConvBNAct(mid_ch, mid2, 3) if booster else None
        self.conv_out = nn.Conv2d(mid2, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.conv(x))
        if self.conv_up is not None:
            x = self.conv_up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(x)


class BiSeNetV2(nn.Module):
    def __init__(self, *, num_classes: int = 19, aux: bool = True, head_mid: int = 1024,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.detail = DetailBranch()
        self.segment = SegmentBranch()
        self.bga = BGALayer(128)
        self.head = SegmentHead(128, head_mid, num_classes, up_factor=8)
        if aux:
            self.aux2 = SegmentHead(16, 128, num_classes, up_factor=4, booster=True)
            self.aux3 = SegmentHead(32, 128, num_classes, up_factor=8, booster=True)
            self.aux4 = SegmentHead(64, 128, num_classes, up_factor=16, booster=True)
            self.aux5_4 = SegmentHead(128, 128, num_classes, up_factor=32, booster=True)
        self.aux = aux

        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                # zero-init the last BN of each GE residual branch (as the reference)
                if getattr(mod, "last_bn", False):
                    nn.init.zeros_(mod.weight)
                else:
                    nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def _up(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        feat_d = self.detail(x)
        feat2, feat3, feat4, feat5_4, feat_s = self.segment(x)
        out = self._up(self.head(self.bga(feat_d, feat_s)), size)
        if self.training and self.aux:
            boosters = (self.aux2(feat2), self.aux3(feat3), self.aux4(feat4), self.aux5_4(feat5_4))
            return [out, *(self._up(b, size) for b in boosters)]
        return out


def bisenetv2(*, num_classes: int = 19, aux: bool = True, align_corners: bool = False) -> nn.Module:
    return BiSeNetV2(num_classes=num_classes, aux=aux, head_mid=1024, align_corners=align_corners)


register(ModelEntry(
    name="bisenetv2", task="segmentation", family="bisenetv2", builder=bisenetv2,
    citation=("Yu, Gao, Wang, Yu, Shen, Sang, \"BiSeNet V2: Bilateral Network with Guided Aggregation for "
              "Real-time Semantic Segmentation\", IJCV 129, 2021 (arXiv:2004.02147)"),
    published=Published(params_m=3.36, num_classes=19, gmacs=24.7, gmacs_hw=(512, 1024), miou=73.4,
                        miou_note="Cityscapes val (paper; test: 72.6)",
                        source="paper / PaddleSeg PP-LiteSeg comparison table (mIoU); params and GMACs counted "
                               "from CoinCheung/BiSeNet lib/models/bisenetv2.py (head mid 1024) without the "
                               "booster heads"),
    aliases=("bisenet_v2",), aux_weights=(1.0, 1.0, 1.0, 1.0), recipe="bisenetv2",
))
