"""PP-LiteSeg (Peng et al., 2022): a real-time segmentation network with a flexible lightweight decoder
(FLD), unified attention fusion modules (UAFM) and a simple pyramid pooling module (SPPM), here in its
T variant on an STDC1 backbone (STDC: Fan et al., CVPR 2021, "Rethinking BiSeNet").

STDC1 backbone (features at 1/8, 1/16, 1/32 with 256 / 512 / 1024 channels):
  x2: ConvBNReLU 3x3 s2 3->32; x4: ConvBNReLU 3x3 s2 32->64;
  x8 / x16 / x32: two CatBottlenecks each (the first with stride 2).
  CatBottleneck(C): 1x1 -> C/2, 3x3 -> C/4, 3x3 -> C/8, 3x3 -> C/8, outputs concatenated (C). The
  stride-2 version puts a depthwise 3x3 s2 conv + BN (`avd_layer`) between the 1x1 and the first
  3x3, and average-pools (3x3 s2) the 1x1 output for the concat (`skip`).
Decoder:
  SPPM: adaptive average pools at bins 1, 2, 4 -> ConvBNReLU 1x1 (1024->128) -> bilinear upsample ->
  sum -> ConvBNReLU 3x3 (128).
  FLD, from 1/32 to 1/8: UAFM_SpAtten(low, high): x = ConvBNReLU 3x3(low) to the high width,
  y = bilinear(high); alpha = sigmoid(ConvBNReLU 3x3(4->2) -> ConvBN 3x3(2->1) over
  [mean_c x, max_c x, mean_c y, max_c y]); out = ConvBNReLU 3x3(x * alpha + y * (1 - alpha)).
  Output widths (arm_out_chs) 64 / 96 / 128 at 1/8 / 1/16 / 1/32.
  Head: ConvBNReLU 3x3 (64) -> 1x1 (no bias) at 1/8, bilinear to the input size.
Training adds the official auxiliary heads (same SegHead design) on the 1/16 and 1/32 FLD outputs;
PaddleSeg weights the three OHEM losses 1 : 1 : 1.

Module names and shapes follow PaddleSeg `paddleseg/models/pp_liteseg.py` (`PPLiteSeg` with its
default arm_out_chs [64, 96, 128], seg_head_inter_chs [64, 64, 64], cm_bin_sizes [1, 2, 4]),
`layers/attention.py` (UAFM_SpAtten) and `backbones/stdcnet.py` (STDC1, layers [2, 2, 2]; its unused
classification `conv_last` is not built). PaddleSeg's conv layers without `bias_attr=False` (SPPM)
keep their bias.

Deviations, by our conventions only: resizes target exact sizes (bilinear, align_corners=False),
so 360x480 (1/32 map 12x15) works; SPPM's adaptive pooling is written as slices + means when the map
is not a multiple of the bin count (e.g. a 2x2 1/32 map at 64x64 input pooled to 4x4), which equals
`adaptive_avg_pool2d` but exports to ONNX.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.layers import ConvBNAct, adaptive_avg_pool, init_conv_bn
from zoo.registry import ModelEntry, Published, register

# An FX leaf here too: torch.fx.wrap patches the name in the calling module's globals.
torch.fx.wrap("adaptive_avg_pool")


# ----------------------------------------------------------------------------- STDC backbone
class CatBottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, block_num: int = 4, stride: int = 1) -> None:
        super().__init__()
        if block_num != 4:
            raise ValueError("only the STDC block_num=4 CatBottleneck is implemented")
        self.stride = stride
        if stride == 2:
            self.avd_layer = nn.Sequential(
                nn.Conv2d(out_ch // 2, out_ch // 2, 3, 2, 1, groups=out_ch // 2, bias=False),
                nn.BatchNorm2d(out_ch // 2),
            )
            self.skip = nn.AvgPool2d(3, 2, 1)
        self.conv_list = nn.ModuleList([
            ConvBNAct(in_ch, out_ch // 2, 1),
            ConvBNAct(out_ch // 2, out_ch // 4, 3),
            ConvBNAct(out_ch // 4, out_ch // 8, 3),
            ConvBNAct(out_ch // 8, out_ch // 8, 3),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv_list[0](x)
        out = self.avd_layer(out1) if self.stride == 2 else out1
        outs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        if self.stride == 2:
            out1 = self.skip(out1)
        return torch.cat([out1, *outs], 1)


class STDCNet(nn.Module):
    """STDC backbone returning the 1/8, 1/16 and 1/32 feature maps (STDC1: layers [2, 2, 2])."""

    def __init__(self, base: int = 64, layers: tuple[int, int, int] = (2, 2, 2)) -> None:
        super().__init__()
        self.x2 = ConvBNAct(3, base // 2, 3, 2)
        self.x4 = ConvBNAct(base // 2, base, 3, 2)
        stages, in_ch = [], base
        for i, n in enumerate(layers):
            out_ch = base * 4 * 2 ** i
            blocks = [CatBottleneck(in_ch if j == 0 else out_ch, out_ch, 4, 2 if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.x8, self.x16, self.x32 = stages
        self.feat_channels = (base * 4, base * 8, base * 16)

    def forward(self, x: torch.Tensor):
        feat8 = self.x8(self.x4(self.x2(x)))
        feat16 = self.x16(feat8)
        return feat8, feat16, self.x32(feat16)


# ----------------------------------------------------------------------------- decoder
class _PoolStage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.conv = ConvBNAct(in_ch, out_ch, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(adaptive_avg_pool(x, self.bins))


class PPContextModule(nn.Module):
    """SPPM: pooled branches (bins 1, 2, 4) -> 1x1 ConvBNReLU -> upsample -> sum -> 3x3 ConvBNReLU."""

    def __init__(self, in_ch: int, inter_ch: int, out_ch: int, bin_sizes=(1, 2, 4),
                 align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.stages = nn.ModuleList([_PoolStage(in_ch, inter_ch, b) for b in bin_sizes])
        self.conv_out = ConvBNAct(inter_ch, out_ch, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = None
        for stage in self.stages:
            y = F.interpolate(stage(x), size=size, mode="bilinear", align_corners=self.align_corners)
            out = y if out is None else out + y
        return self.conv_out(out)


class UAFM_SpAtten(nn.Module):  # noqa: N801 - the official name
    """Unified attention fusion with spatial attention (mean and max over channels)."""

    def __init__(self, x_ch: int, y_ch: int, out_ch: int, ksize: int = 3, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.conv_x = ConvBNAct(x_ch, y_ch, ksize)
        self.conv_out = ConvBNAct(y_ch, out_ch, 3)
        self.conv_xy_atten = nn.Sequential(ConvBNAct(4, 2, 3), ConvBNAct(2, 1, 3, act=None))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: the low-level (higher-resolution) feature, y: the high-level feature."""
        x = self.conv_x(x)
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        stats = torch.cat([torch.mean(x, 1, keepdim=True), torch.amax(x, 1, keepdim=True),
                           torch.mean(y, 1, keepdim=True), torch.amax(y, 1, keepdim=True)], 1)
        atten = torch.sigmoid(self.conv_xy_atten(stats))
        return self.conv_out(x * atten + y * (1 - atten))


class PPLiteSegHead(nn.Module):
    def __init__(self, backbone_out_chs, arm_out_chs, cm_bin_sizes, cm_out_ch: int,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.cm = PPContextModule(backbone_out_chs[-1], cm_out_ch, cm_out_ch, cm_bin_sizes, align_corners)
        self.arm_list = nn.ModuleList()
        for i, low_ch in enumerate(backbone_out_chs):
            high_ch = cm_out_ch if i == len(backbone_out_chs) - 1 else arm_out_chs[i + 1]
            self.arm_list.append(UAFM_SpAtten(low_ch, high_ch, arm_out_chs[i], 3, align_corners))

    def forward(self, feats):
        high = self.cm(feats[-1])
        outs = []
        for i in reversed(range(len(feats))):
            high = self.arm_list[i](feats[i], high)
            outs.insert(0, high)
        return outs  # [1/8, 1/16, 1/32]


class SegHead(nn.Module):
    def __init__(self, in_ch: int, mid_ch: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_ch, mid_ch, 3)
        self.conv_out = nn.Conv2d(mid_ch, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class PPLiteSeg(nn.Module):
    def __init__(self, *, num_classes: int = 19, aux: bool = True, stdc_layers=(2, 2, 2),
                 arm_out_chs=(64, 96, 128), seg_head_inter_chs=(64, 64, 64), cm_bin_sizes=(1, 2, 4),
                 cm_out_ch: int = 128, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.backbone = STDCNet(64, tuple(stdc_layers))
        self.ppseg_head = PPLiteSegHead(self.backbone.feat_channels, arm_out_chs, cm_bin_sizes, cm_out_ch,
                                        align_corners)
        n_heads = len(arm_out_chs) if aux else 1
        self.seg_heads = nn.ModuleList([SegHead(c, m, num_classes)
                                        for c, m in list(zip(arm_out_chs, seg_head_inter_chs))[:n_heads]])

        init_conv_bn(self)

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        feats = self.ppseg_head(self.backbone(x))
        if self.training and len(self.seg_heads) > 1:
            return [F.interpolate(head(f), size=size, mode="bilinear", align_corners=self.align_corners)
                    for head, f in zip(self.seg_heads, feats)]
        return F.interpolate(self.seg_heads[0](feats[0]), size=size, mode="bilinear",
                             align_corners=self.align_corners)


def ppliteseg_t(*, num_classes: int = 19, aux: bool = True, align_corners: bool = False) -> nn.Module:
    return PPLiteSeg(num_classes=num_classes, aux=aux, stdc_layers=(2, 2, 2), align_corners=align_corners)


_PPLITESEG_DEVIATION = ("the published count is of zh320's re-implementation, whose decoder is narrower "
                        "(1x1 UAFM inputs, 32/64/128 widths, 256-wide SPPM); this network follows PaddleSeg's "
                        "pp_liteseg.py structure")

register(ModelEntry(
    name="ppliteseg_t", task="segmentation", family="ppliteseg", builder=ppliteseg_t,
    citation=("Peng, Liu, Tang, et al., \"PP-LiteSeg: A Superior Real-Time Semantic Segmentation Model\", "
              "arXiv:2204.02681, 2022; backbone: Fan et al., \"Rethinking BiSeNet For Real-time Semantic "
              "Segmentation\", CVPR 2021"),
    published=Published(params_m=6.33, num_classes=19, gmacs=8.97, gmacs_hw=(512, 1024), miou=73.1,
                        miou_note="Cityscapes val, PP-LiteSeg-T1 at 512x1024 (test: 72.0)",
                        source="PaddleSeg configs/pp_liteseg/README.md (mIoU); params and GMACs counted from "
                               "the zh320/realtime-semantic-segmentation-pytorch re-implementation",
                        params_deviation=_PPLITESEG_DEVIATION + " (8.20 M here)",
                        gmacs_deviation="same reason as the parameter count (12.63 GMACs @512x1024 here)"),
    aliases=("ppliteseg", "pp_liteseg", "pp_liteseg_t"), aux_weights=(1.0, 1.0), recipe="ppliteseg",
))
