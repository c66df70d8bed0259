"""DDRNet (Hong et al., 2021): deep dual-resolution networks for real-time semantic segmentation.

A ResNet-style stem and two early stages reach 1/8; the network then splits into a high-resolution
branch that stays at 1/8 and a low-resolution branch that goes down to 1/64, with bilateral fusions
(low += strided-conv(high), high += upsample(1x1-conv(low))) after each stage-3 segment and after
stage 4, a DAPPM context module on the 1/64 map, and a segmentation head on the sum of both branches
at 1/8. Module names follow the official code (ydhongHIT/DDRNet `segmentation/DDRNet_*.py`), so the
official checkpoints' keys line up; BatchNorm is plain `nn.BatchNorm2d`.

Deviations from the official forward, by our conventions only: logits (and the auxiliary logits)
are bilinearly resized to the input resolution inside the network, and every resize targets the
exact size of the tensor it is added to, so any input whose sides are multiples of 8 works
(e.g. 360x480: 1/64 map 6x8, 64x64: 1/64 map 1x1).

The auxiliary head (`seghead_extra`, training only) reads the high-resolution branch after the last
stage-3 fusion, as in the official code ("conv4" in the paper's numbering).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.layers import init_conv_bn
from zoo.registry import ModelEntry, Published, register


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 no_relu: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + identity
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Module):
    expansion = 2

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 no_relu: bool = True) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + identity
        return out if self.no_relu else self.relu(out)


def _stage(block: type[BasicBlock] | type[Bottleneck], in_ch: int, planes: int, blocks: int,
           stride: int = 1) -> nn.Sequential:
    """`blocks` residual blocks; the last one of a multi-block stage skips its final ReLU (its output
    is fused or summed before the next pre-activation)."""
    out_ch = planes * block.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _bn(out_ch))
    layers = [block(in_ch, planes, stride, downsample)]
    for i in range(1, blocks):
        layers.append(block(out_ch, planes, no_relu=(i == blocks - 1)))
    return nn.Sequential(*layers)


def _bn_relu_conv(in_ch: int, out_ch: int, k: int, pool: nn.Module | None = None) -> nn.Sequential:
    mods = [] if pool is None else [pool]
    mods += [_bn(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False)]
    return nn.Sequential(*mods)


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module: pooled branches (5/2, 9/4, 17/8, global) added to the
    previous branch and refined by a 3x3 conv in turn, concatenated, fused, plus a 1x1 shortcut."""

    def __init__(self, in_ch: int, branch_ch: int, out_ch: int, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.scale1 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AvgPool2d(5, 2, 2))
        self.scale2 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AvgPool2d(9, 4, 4))
        self.scale3 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AvgPool2d(17, 8, 8))
        self.scale4 = _bn_relu_conv(in_ch, branch_ch, 1, nn.AdaptiveAvgPool2d((1, 1)))
        self.scale0 = _bn_relu_conv(in_ch, branch_ch, 1)
        self.process1 = _bn_relu_conv(branch_ch, branch_ch, 3)
        self.process2 = _bn_relu_conv(branch_ch, branch_ch, 3)
        self.process3 = _bn_relu_conv(branch_ch, branch_ch, 3)
        self.process4 = _bn_relu_conv(branch_ch, branch_ch, 3)
        self.compression = _bn_relu_conv(branch_ch * 5, out_ch, 1)
        self.shortcut = _bn_relu_conv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.scale0(x)
        outs = [y]
        for scale, process in ((self.scale1, self.process1), (self.scale2, self.process2),
                               (self.scale3, self.process3), (self.scale4, self.process4)):
            up = F.interpolate(scale(x), size=size, mode="bilinear", align_corners=self.align_corners)
            y = process(up + y)
            outs.append(y)
        return self.compression(torch.cat(outs, 1)) + self.shortcut(x)


class SegHead(nn.Module):
    """BN-ReLU-3x3 conv -> BN-ReLU-1x1 conv (with bias) to the classes (official `segmenthead`)."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = _bn(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False)
        self.bn2 = _bn(mid_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_ch, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(x)))


class DualResNet(nn.Module):
    """DDRNet. `layers` = blocks of (layer1, layer2, layer3, layer4) (low-resolution branch);
    `stage3_splits` cuts stage 3 into that many segments, each followed by a bilateral fusion
    (DDRNet-39: 2). The high-resolution branch has layers[2] // splits blocks per stage-3 segment and
    layers[3] blocks in stage 4; stage 5 is one Bottleneck on each branch."""

    def __init__(self, *, num_classes: int = 19, layers: tuple[int, int, int, int] = (2, 2, 2, 2),
                 planes: int = 64, spp_planes: int = 128, head_planes: int = 128, stage3_splits: int = 1,
                 aux: bool = True, align_corners: bool = False) -> None:
        super().__init__()
        hi = planes * 2  # high-resolution branch width
        self.align_corners = align_corners
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, planes, 3, 2, 1), _bn(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, 2, 1), _bn(planes), nn.ReLU(inplace=True),
        )
        self.relu = nn.ReLU(inplace=False)  # stage outputs are reused, never modify them in place
        self.layer1 = _stage(BasicBlock, planes, planes, layers[0])
        self.layer2 = _stage(BasicBlock, planes, planes * 2, layers[1], stride=2)

        # Stage 3, possibly in segments; official names: layer3 / layer3_ / compression3 / down3 for
        # one segment, layer3_1, layer3_1_, compression3_1, down3_1, ... for several.
        n3 = layers[2] // stage3_splits
        suffixes = [""] if stage3_splits == 1 else [f"_{i + 1}" for i in range(stage3_splits)]
        self._stage3 = tuple(suffixes)
        for i, sfx in enumerate(suffixes):
            lo_in = planes * 2 if i == 0 else planes * 4
            hi_in = planes * 2 if i == 0 else hi
            self.add_module(f"layer3{sfx}", _stage(BasicBlock, lo_in, planes * 4, n3, stride=2 if i == 0 else 1))
            self.add_module(f"layer3{sfx}_", _stage(BasicBlock, hi_in, hi, n3))
            self.add_module(f"compression3{sfx}", nn.Sequential(nn.Conv2d(planes * 4, hi, 1, bias=False), _bn(hi)))
            self.add_module(f"down3{sfx}", nn.Sequential(nn.Conv2d(hi, planes * 4, 3, 2, 1, bias=False),
                                                         _bn(planes * 4)))

        self.layer4 = _stage(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        self.layer4_ = _stage(BasicBlock, hi, hi, layers[3])
        self.compression4 = nn.Sequential(nn.Conv2d(planes * 8, hi, 1, bias=False), _bn(hi))
        self.down4 = nn.Sequential(
            nn.Conv2d(hi, planes * 4, 3, 2, 1, bias=False), _bn(planes * 4), nn.ReLU(inplace=True),
            nn.Conv2d(planes * 4, planes * 8, 3, 2, 1, bias=False), _bn(planes * 8),
        )
        self.layer5_ = _stage(Bottleneck, hi, hi, 1)
        self.layer5 = _stage(Bottleneck, planes * 8, planes * 8, 1, stride=2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4, align_corners)
        self.seghead_extra = SegHead(hi, head_planes, num_classes) if aux else None
        self.final_layer = SegHead(planes * 4, head_planes, num_classes)

        init_conv_bn(self, zero_bias=False)

    def _up(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor):
        out_size = x.shape[-2:]
        x = self.layer1(self.conv1(x))
        lo = self.layer2(self.relu(x))  # 1/8
        hi = lo
        for sfx in self._stage3:
            lo = getattr(self, f"layer3{sfx}")(self.relu(lo))
            hi = getattr(self, f"layer3{sfx}_")(self.relu(hi))
            lo_in = lo
            lo = lo + getattr(self, f"down3{sfx}")(self.relu(hi))
            hi = hi + self._up(getattr(self, f"compression3{sfx}")(self.relu(lo_in)), hi.shape[-2:])
        aux_in = hi

        lo = self.layer4(self.relu(lo))
        hi = self.layer4_(self.relu(hi))
        lo_in = lo
        lo = lo + self.down4(self.relu(hi))
        hi = hi + self._up(self.compression4(self.relu(lo_in)), hi.shape[-2:])

        hi = self.layer5_(self.relu(hi))
        lo = self._up(self.spp(self.layer5(self.relu(lo))), hi.shape[-2:])
        out = self._up(self.final_layer(lo + hi), out_size)
        if self.training and self.seghead_extra is not None:
            return [out, self._up(self.seghead_extra(aux_in), out_size)]
        return out


def ddrnet23_slim(*, num_classes: int = 19, aux: bool = True, align_corners: bool = False) -> nn.Module:
    return DualResNet(num_classes=num_classes, layers=(2, 2, 2, 2), planes=32, spp_planes=128, head_planes=64,
                      aux=aux, align_corners=align_corners)


def ddrnet23(*, num_classes: int = 19, aux: bool = True, align_corners: bool = False) -> nn.Module:
    return DualResNet(num_classes=num_classes, layers=(2, 2, 2, 2), planes=64, spp_planes=128, head_planes=128,
                      aux=aux, align_corners=align_corners)


def ddrnet39(*, num_classes: int = 19, aux: bool = True, align_corners: bool = False) -> nn.Module:
    return DualResNet(num_classes=num_classes, layers=(3, 4, 6, 3), planes=64, spp_planes=128, head_planes=256,
                      stage3_splits=2, aux=aux, align_corners=align_corners)


_CITATION = ("Hong, Pan, Sun, Jia, \"Deep Dual-resolution Networks for Real-time and Accurate Semantic "
             "Segmentation of Road Scenes\", arXiv:2101.06085, 2021 (IEEE T-ITS 2022)")
_SOURCE = ("ydhongHIT/DDRNet README (mIoU); params counted from the official segmentation code without "
           "the auxiliary head (seghead_extra); GMACs as published (fvcore)")

register(ModelEntry(
    name="ddrnet23_slim", task="segmentation", family="ddrnet", builder=ddrnet23_slim, citation=_CITATION,
    published=Published(params_m=5.70, num_classes=19, gmacs=36.5, gmacs_hw=(1024, 2048), miou=77.8,
                        miou_note="Cityscapes val", source=_SOURCE),
    aliases=("ddrnet", "ddrnet_23_slim"), aux_weights=(0.4,), recipe="ddrnet",
))
register(ModelEntry(
    name="ddrnet23", task="segmentation", family="ddrnet", builder=ddrnet23, citation=_CITATION,
    published=Published(params_m=20.15, num_classes=19, gmacs=143.5, gmacs_hw=(1024, 2048), miou=79.5,
                        miou_note="Cityscapes val", source=_SOURCE),
    aliases=("ddrnet_23",), aux_weights=(0.4,), recipe="ddrnet23",
))
register(ModelEntry(
    name="ddrnet39", task="segmentation", family="ddrnet", builder=ddrnet39, citation=_CITATION,
    published=Published(params_m=32.36, num_classes=19, gmacs=281.2, gmacs_hw=(1024, 2048), miou=80.4,
                        miou_note="Cityscapes test (server result in the ydhongHIT/DDRNet README)",
                        source="ydhongHIT/DDRNet README (mIoU); paper Table (281.2 GFLOPs); params counted "
                               "from the official segmentation/DDRNet_39.py without the auxiliary head"),
    aliases=("ddrnet_39",), aux_weights=(0.4,), recipe="ddrnet39",
))
