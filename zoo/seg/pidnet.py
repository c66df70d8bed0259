"""PIDNet (Xu, Xiong, Bhattacharyya, CVPR 2023): a three-branch real-time segmentation network named
after a PID controller.

* I (integral) branch: DDRNet-style stem and residual stages down to 1/64 (BasicBlocks, then two
  Bottlenecks), closed by the PAPPM context module (parallel pooled branches added to one 1x1 branch,
  concatenated and refined by one grouped 3x3 conv, groups=4).
* P (proportional) branch: stays at 1/8 (2*planes channels); after stages 3 and 4 it absorbs the
  I branch through PagFM (pixel-attention-guided fusion: sigmoid(sum_c q*k) gates between the
  branch and the bilinearly upsampled, compressed I features).
* D (derivative) branch: stays at 1/8, one BasicBlock then Bottlenecks, plus `diff3/diff4`
  (3x3 conv + BN on the I features, upsampled and added).
* Light-Bag fusion: out = conv_p((1 - sigma(d)) * i + p) + conv_i(i + sigma(d) * p), then the
  segmentation head at 1/8.

Module names and shapes follow the official code (XuJiacong/PIDNet `models/pidnet.py`,
`models/model_utils.py`); the residual blocks, stage builder and pre-activation head are DDRNet's
(`zoo.seg.ddrnet`), which the official code shares. BatchNorm is plain `nn.BatchNorm2d`.

Deviations from the official forward, by our conventions only:

* logits (and the auxiliary logits) are bilinearly resized to the input resolution inside the
  network, every internal resize targets the exact size of the tensor it is added to, so any input
  whose sides are multiples of 8 works (360x480: 1/8 map 45x60, 1/64 map 6x8);
* training returns [main, P-branch aux] only. The official model also has a one-channel boundary
  head (`seghead_d`) for its boundary (BAS) loss; that loss needs boundary labels the trainer does not
  produce, so the head is not built here (its 1/8-scale D features are still computed and used by
  Light-Bag). Official checkpoints therefore load with `strict=False` (the `seghead_d.*` keys are
  surplus) after stripping their `model.` prefix.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.layers import init_conv_bn
from zoo.registry import ModelEntry, Published, register
from zoo.seg.ddrnet import BasicBlock, Bottleneck, SegHead, _bn, _bn_relu_conv, _stage


def _conv_bn(in_ch: int, out_ch: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False), _bn(out_ch))


def _single_block(block: type[BasicBlock] | type[Bottleneck], in_ch: int, planes: int) -> nn.Module:
    """One residual block without its final ReLU (official `_make_single_layer`)."""
    out_ch = planes * block.expansion
    downsample = None if in_ch == out_ch else _conv_bn(in_ch, out_ch)
    return block(in_ch, planes, 1, downsample, no_relu=True)


class PAPPM(nn.Module):
    """Parallel Aggregation PPM: pooled branches (5/2, 9/4, 17/8, global) are each upsampled and added
    to the 1x1 branch, concatenated and refined by ONE grouped 3x3 conv (groups=4), then fused with
    the 1x1 branch (1x1 conv), plus a 1x1 shortcut. All convs are pre-activation (BN-ReLU-conv)."""

    def __init__(self, in_ch: int, branch_ch: int, out_ch: int, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.scale1 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AvgPool2d(5, 2, 2))
        self.scale2 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AvgPool2d(9, 4, 4))
        self.scale3 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AvgPool2d(17, 8, 8))
        self.scale4 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AdaptiveAvgPool2d((1, 1)))
        self.scale0 = _bn_relu_conv(in_ch, branch_ch, 1)
        self.scale_process = nn.Sequential(
            _bn(branch_ch * 4), nn.ReLU(inplace=True),
            nn.Conv2d(branch_ch * 4, branch_ch * 4, 3, padding=1, groups=4, bias=False),
        )
        self.compression = _bn_relu_conv(branch_ch * 5, out_ch, 1)
        self.shortcut = _bn_relu_conv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x0 = self.scale0(x)
        scales = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=self.align_corners) + x0
                  for s in (self.scale1, self.scale2, self.scale3, self.scale4)]
        out = self.scale_process(torch.cat(scales, 1))
        return self.compression(torch.cat([x0, out], 1)) + self.shortcut(x)


class PagFM(nn.Module):
    """Pixel-attention-guided fusion: x (P branch, high resolution) and y (I branch, low resolution)
    are projected by 1x1 conv + BN; sigma = sigmoid(sum over channels of x_k * up(y_q)) gates
    x' = (1 - sigma) x + sigma up(y)."""

    def __init__(self, in_ch: int, mid_ch: int) -> None:
        super().__init__()
        self.f_x = _conv_bn(in_ch, mid_ch)
        self.f_y = _conv_bn(in_ch, mid_ch)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y_q = F.interpolate(self.f_y(y), size=size, mode="bilinear", align_corners=False)
        sim = torch.sigmoid(torch.sum(self.f_x(x) * y_q, dim=1, keepdim=True))
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return (1 - sim) * x + sim * y


class LightBag(nn.Module):
    """Light boundary-attention-guided fusion (official `Light_Bag`)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv_p = _conv_bn(in_ch, out_ch)
        self.conv_i = _conv_bn(in_ch, out_ch)

    def forward(self, p: torch.Tensor, i: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        edge = torch.sigmoid(d)
        return self.conv_p((1 - edge) * i + p) + self.conv_i(i + edge * p)


class PIDNet(nn.Module):
    """PIDNet with m BasicBlocks in the early / P stages and n in I stages 3 and 4 (S and M: m=2,
    n=3, with PAPPM and Light-Bag). Only the m=2 design (S / M) is implemented."""

    # PyTorch FX INT8 graphs run the two pixel-attention fusions wholly in float
    # (`quant.fx_quant.float_scopes`): with them in INT8, per-tensor 8-bit features feed the
    # channel dot product whose sigmoid gates the P and I branches, and the masks agreed with FP32
    # on 94.8 % of CamVid val pixels (static PTQ, any calibration method; 96.5 / 97.7 % with one
    # of them float, 99.6 % with both). Every convolution outside them stays INT8.
    fx_float_modules = ("pag3", "pag4")

    def __init__(self, *, num_classes: int = 19, m: int = 2, n: int = 3, planes: int = 32,
                 ppm_planes: int = 96, head_planes: int = 128, aux: bool = True,
                 align_corners: bool = False) -> None:
        super().__init__()
        if m != 2:
            raise ValueError("only the m=2 PIDNet design (S / M: PAPPM + Light-Bag) is implemented")
        self.align_corners = align_corners
        # I branch
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, planes, 3, 2, 1), _bn(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, 2, 1), _bn(planes), nn.ReLU(inplace=True),
        )
        self.relu = nn.ReLU(inplace=False)  # stage outputs are reused, never modify them in place
        self.layer1 = _stage(BasicBlock, planes, planes, m)
        self.layer2 = _stage(BasicBlock, planes, planes * 2, m, stride=2)
        self.layer3 = _stage(BasicBlock, planes * 2, planes * 4, n, stride=2)
        self.layer4 = _stage(BasicBlock, planes * 4, planes * 8, n, stride=2)
        self.layer5 = _stage(Bottleneck, planes * 8, planes * 8, 2, stride=2)
        # P branch
        self.compression3 = _conv_bn(planes * 4, planes * 2)
        self.compression4 = _conv_bn(planes * 8, planes * 2)
        self.pag3 = PagFM(planes * 2, planes)
        self.pag4 = PagFM(planes * 2, planes)
        self.layer3_ = _stage(BasicBlock, planes * 2, planes * 2, m)
        self.layer4_ = _stage(BasicBlock, planes * 2, planes * 2, m)
        self.layer5_ = _stage(Bottleneck, planes * 2, planes * 2, 1)
        # D branch
        self.layer3_d = _single_block(BasicBlock, planes * 2, planes)
        self.layer4_d = _stage(Bottleneck, planes, planes, 1)
        self.diff3 = _conv_bn(planes * 4, planes, 3)
        self.diff4 = _conv_bn(planes * 8, planes * 2, 3)
        self.spp = PAPPM(planes * 16, ppm_planes, planes * 4, align_corners)
        self.dfm = LightBag(planes * 4, planes * 4)
        self.layer5_d = _stage(Bottleneck, planes * 2, planes * 2, 1)
        # heads (the boundary head `seghead_d` is not built: see the module docstring)
        self.seghead_p = SegHead(planes * 2, head_planes, num_classes) if aux else None
        self.final_layer = SegHead(planes * 4, head_planes, num_classes)

        init_conv_bn(self, zero_bias=False)

    def _up(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor):
        out_size = x.shape[-2:]
        x = self.layer1(self.conv1(x))
        x = self.relu(self.layer2(self.relu(x)))  # 1/8
        size8 = x.shape[-2:]
        x_p = self.layer3_(x)
        x_d = self.layer3_d(x)

        x = self.relu(self.layer3(x))  # 1/16
        x_p = self.pag3(x_p, self.compression3(x))
        x_d = x_d + self._up(self.diff3(x), size8)
        aux_in = x_p

        x = self.relu(self.layer4(x))  # 1/32
        x_p = self.layer4_(self.relu(x_p))
        x_d = self.layer4_d(self.relu(x_d))
        x_p = self.pag4(x_p, self.compression4(x))
        x_d = x_d + self._up(self.diff4(x), size8)

        x_p = self.layer5_(self.relu(x_p))
        x_d = self.layer5_d(self.relu(x_d))
        x = self._up(self.spp(self.layer5(x)), size8)  # 1/64 -> 1/8

        out = self._up(self.final_layer(self.dfm(x_p, x, x_d)), out_size)
        if self.training and self.seghead_p is not None:
            return [out, self._up(self.seghead_p(aux_in), out_size)]
        return out


def pidnet_s(*, num_classes: int = 19, aux: bool = True, align_corners: bool = False) -> nn.Module:
    return PIDNet(num_classes=num_classes, m=2, n=3, planes=32, ppm_planes=96, head_planes=128,
                  aux=aux, align_corners=align_corners)


_CITATION = ("Xu, Xiong, Bhattacharyya, \"PIDNet: A Real-time Semantic Segmentation Network Inspired by "
             "PID Controllers\", CVPR 2023 (arXiv:2206.02066)")

register(ModelEntry(
    name="pidnet_s", task="segmentation", family="pidnet", builder=pidnet_s, citation=_CITATION,
    published=Published(params_m=7.63, num_classes=19, gmacs=47.5, gmacs_hw=(1024, 2048), miou=78.8,
                        miou_note="Cityscapes val (test: 78.6)",
                        source="XuJiacong/PIDNet README (mIoU); params and GMACs counted from the official "
                               "models/pidnet.py without the auxiliary heads (augment=False)"),
    aliases=("pidnet",), aux_weights=(0.4,), recipe="pidnet",
))
