"""DeepLabV3+ (Chen et al., 2018): atrous spatial pyramid pooling encoder + a light decoder.

Layout of VainF/DeepLabV3Plus-Pytorch (`network/_deeplab.py`, `modeling.py`), output stride 16:

* Backbone from torchvision, built without weights (weights=None):
  - MobileNetV2: `features[0:4]` is the low-level tensor (24 ch, 1/4); `features[4:-1]` gives 320 ch
    at 1/16 (the final 1x1 conv to 1280 is dropped). For OS16 the stride-2 depthwise conv of block 14
    becomes stride 1 and the depthwise convs of blocks 15-17 use dilation 2 (padding 2), which is what
    VainF's own MobileNetV2 does (`previous_dilation` for the first block of the stage, then `dilation`).
  - ResNet-101: `replace_stride_with_dilation=[False, False, True]`; low level = layer1 (256 ch),
    ASPP input = layer4 (2048 ch). The ImageNet `fc` / `avgpool` are removed.
* ASPP: 1x1, three 3x3 at rates 6/12/18 and image pooling (AdaptiveAvgPool 1 -> 1x1), each 256 ch +
  BN + ReLU -> concat 1280 -> 1x1 256 + BN + ReLU + Dropout 0.1.
* Decoder: low-level 1x1 -> 48 + BN + ReLU, concat with the ASPP output resized to the low-level map
  (304 ch), one 3x3 256 + BN + ReLU, 1x1 (with bias) -> classes, bilinear to the input size.

Plain (non-separable) convs everywhere, as VainF's released weights. No auxiliary head. Every resize
targets an exact tensor size (align_corners=False), so any input whose sides are multiples of 16
works (360x480: 1/16 map 23x30; 64x64: 4x4); other sizes also run, since torchvision's padding
rounds up.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from zoo.layers import ConvBNAct
from zoo.registry import ModelEntry, Published, register


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool -> 1x1 conv + BN + ReLU -> broadcast to the map size."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNAct(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_ch: int, rates: tuple[int, ...] = (6, 12, 18), out_ch: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        branches = [ConvBNAct(in_ch, out_ch, 1)]
        branches += [ConvBNAct(in_ch, out_ch, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBNAct(out_ch * len(branches), out_ch, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], 1))


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, in_ch: int, low_ch: int, num_classes: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.project = ConvBNAct(low_ch, 48, 1)
        self.aspp = ASPP(in_ch, rates)
        self.fuse = ConvBNAct(48 + 256, 256, 3)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.project(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], 1)))


class _MobileNetV2Backbone(nn.Module):
    """torchvision MobileNetV2 features, dilated for OS16; returns (low 24 ch @1/4, high 320 ch @1/16)."""

    def __init__(self) -> None:
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None).features
        # OS16: block 14 (first 160-ch block) keeps dilation 1 but loses its stride; 15-17 dilate by 2.
        features[14].conv[1][0].stride = (1, 1)
        features[14].stride = 1
        for i in (15, 16, 17):
            dw = features[i].conv[1][0]
            dw.dilation, dw.padding = (2, 2), (2, 2)
        self.low = features[0:4]
        self.high = features[4:-1]
        self.low_channels, self.high_channels = 24, 320

    def forward(self, x: torch.Tensor):
        low = self.low(x)
        return low, self.high(low)


class _ResNetBackbone(nn.Module):
    """torchvision ResNet with layer4 dilated (OS16); returns (layer1 256 ch @1/4, layer4 2048 ch @1/16)."""

    def __init__(self, depth: int = 101) -> None:
        super().__init__()
        ctor = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        net = ctor(weights=None, replace_stride_with_dilation=[False, False, True])
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.low_channels, self.high_channels = 256, 2048

    def forward(self, x: torch.Tensor):
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


class DeepLabV3Plus(nn.Module):
    def __init__(self, backbone: nn.Module, *, num_classes: int = 19, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DeepLabV3PlusHead(backbone.high_channels, backbone.low_channels, num_classes, rates)
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # Small classifier init (mmseg's conv_seg: normal, std 0.01) keeps the fresh logits small.
        nn.init.normal_(self.head.classifier.weight, std=0.01)
        nn.init.zeros_(self.head.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        out = self.head(low, high)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplabv3plus_mobilenetv2(*, num_classes: int = 19) -> nn.Module:
    return DeepLabV3Plus(_MobileNetV2Backbone(), num_classes=num_classes)


def deeplabv3plus_resnet101(*, num_classes: int = 19) -> nn.Module:
    return DeepLabV3Plus(_ResNetBackbone(101), num_classes=num_classes)


_CITATION = ("Chen, Zhu, Papandreou, Schroff, Adam, \"Encoder-Decoder with Atrous Separable Convolution for "
             "Semantic Image Segmentation\", ECCV 2018")
_SOURCE = ("VainF/DeepLabV3Plus-Pytorch README (Cityscapes val mIoU, OS16); params and GMACs counted "
           "from VainF's network code (fvcore), MODELS.md Table A")

register(ModelEntry(
    name="deeplabv3plus_mobilenetv2", task="segmentation", family="deeplabv3plus",
    builder=deeplabv3plus_mobilenetv2, citation=_CITATION,
    published=Published(params_m=5.23, num_classes=19, gmacs=134.7, gmacs_hw=(1024, 2048), miou=72.1,
                        miou_note="Cityscapes val (VainF, OS16)", source=_SOURCE),
    aliases=("deeplabv3plus", "deeplabv3plus_mobilenet"), recipe="deeplabv3plus",
))
register(ModelEntry(
    name="deeplabv3plus_resnet101", task="segmentation", family="deeplabv3plus",
    builder=deeplabv3plus_resnet101, citation=_CITATION,
    published=Published(params_m=58.75, num_classes=19, gmacs=633.5, gmacs_hw=(1024, 2048), miou=76.2,
                        miou_note="Cityscapes val (VainF, OS16)", source=_SOURCE),
    aliases=(), recipe="deeplabv3plus",
))
