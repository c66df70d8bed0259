"""ESPNet (Mehta et al., ECCV 2018): efficient spatial pyramid (ESP) blocks of dilated convolutions.

Written from the paper and from the structure of the official checkpoints; the state-dict keys and
shapes equal those of `ESPNet` in sacmehta/ESPNet `train/Model.py`, so the official `.pth` files
load with `strict=True`.

Structure (p ESP blocks at 1/4, q at 1/8; every BN has eps=1e-3; every activation is PReLU):

  level1   CBR 3x3 s2 3->16                                             1/2
  b1       BR(16+3) over cat[level1, avgpool(x)]                         1/2
  level2_0 strided ESP block 19->64, level2: p ESP blocks 64->64         1/4
  b2       BR(131) over cat[level2 out, level2_0 out, avgpool^2(x)]      1/4
  level3_0 strided ESP block 131->128, level3: q ESP blocks 128->128     1/8
  b3       BR(256) over cat[level3_0 out, level3 out]
  encoder.classifier 1x1 -> C; decoder: BN, deconv x2, concat with 1x1 projection of b2's output,
  BR + ESP block (2C->C, no residual), deconv x2 + BR, concat with the 1/2-scale skip, CBR 3x3,
  deconv x2 -> logits at full resolution.

The two official decoders differ in the 1/2-scale skip: `train/Model.py` (CamVid checkpoint)
concatenates the b1 output (19 channels), `test/Model.py` (Cityscapes checkpoint) the raw level1
output (16 channels). `decoder_skip` selects it; loading a state dict whose `conv.conv.weight`
has the other variant's input width switches the model to that variant (see `_load_from_state_dict`).

Input height and width must be multiples of 8 (three exact x2 transposed convolutions).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from zoo.layers import BNAct, ConvBNAct, prelu
from zoo.registry import ModelEntry, OfficialWeights, Published, register

_EPS = 1e-3  # the official BatchNorm eps everywhere

DecoderSkip = Literal["b1", "level1"]
_SKIP_CHANNELS = {"b1": 16 + 3, "level1": 16}


def _cbr(in_ch: int, out_ch: int, k: int, stride: int = 1) -> ConvBNAct:
    return ConvBNAct(in_ch, out_ch, k, stride, bn_eps=_EPS, act=prelu)


def _c(in_ch: int, out_ch: int, k: int, stride: int = 1, dilation: int = 1) -> ConvBNAct:
    return ConvBNAct(in_ch, out_ch, k, stride, dilation=dilation, norm=False, act=None)


def _br(ch: int) -> BNAct:
    return BNAct(ch, bn_eps=_EPS, act=prelu)


class ESPBlock(nn.Module):
    """Reduce (1x1, or 3x3 s2 when strided) -> 5 parallel 3x3 dilated convs (d = 1, 2, 4, 8, 16)
    -> hierarchical feature fusion (running sums of the d>=2 branches) -> concat -> (+ input) -> BR.

    Branch widths: n = out // 5 for d >= 2, out - 4n for d = 1 (it carries the remainder).
    Strided version (official `DownSamplerB`): BN and PReLU sit directly on the block (`bn`, `act`),
    no residual. Plain version (`DilatedParllelResidualBlockB`): `bn` is a BR module.
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        n = out_ch // 5
        n1 = out_ch - 4 * n
        self.strided = stride != 1
        self.residual = residual and not self.strided and in_ch == out_ch
        self.c1 = _c(in_ch, n, 3 if self.strided else 1, stride)
        self.d1 = _c(n, n1, 3, dilation=1)
        self.d2 = _c(n, n, 3, dilation=2)
        self.d4 = _c(n, n, 3, dilation=4)
        self.d8 = _c(n, n, 3, dilation=8)
        self.d16 = _c(n, n, 3, dilation=16)
        if self.strided:
            self.bn = nn.BatchNorm2d(out_ch, eps=_EPS)
            self.act = prelu(out_ch)
        else:
            self.bn = _br(out_ch)
            self.act = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.c1(x)
        a1 = self.d2(r)
        a2 = a1 + self.d4(r)
        a3 = a2 + self.d8(r)
        a4 = a3 + self.d16(r)
        y = torch.cat([self.d1(r), a1, a2, a3, a4], 1)
        if self.residual:
            y = x + y
        y = self.bn(y)
        if self.act is not None:
            y = self.act(y)
        return y


class InputProjection(nn.Module):
    """The image downsampled `times` times by 3x3 s2 average pooling (pad 1, zero-padded count)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class ESPNetEncoder(nn.Module):
    """ESPNet-C (the encoder); `classifier` gives 1/8-resolution logits."""

    def __init__(self, num_classes: int, p: int, q: int) -> None:
        super().__init__()
        self.level1 = _cbr(3, 16, 3, 2)
        self.sample1 = InputProjection(1)
        self.sample2 = InputProjection(2)
        self.b1 = _br(16 + 3)
        self.level2_0 = ESPBlock(16 + 3, 64, stride=2)
        self.level2 = nn.ModuleList(ESPBlock(64, 64) for _ in range(p))
        self.b2 = _br(128 + 3)
        self.level3_0 = ESPBlock(128 + 3, 128, stride=2)
        self.level3 = nn.ModuleList(ESPBlock(128, 128) for _ in range(q))
        self.b3 = _br(256)
        self.classifier = _c(256, num_classes, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (level1 out [1/2, 16], b1 out [1/2, 19], b2 out [1/4, 131], b3 out [1/8, 256])."""
        l1 = self.level1(x)
        x1 = self.b1(torch.cat([l1, self.sample1(x)], 1))
        y0 = self.level2_0(x1)
        y = y0
        for block in self.level2:
            y = block(y)
        x2 = self.b2(torch.cat([y, y0, self.sample2(x)], 1))  # order: blocks, strided block, image
        z0 = self.level3_0(x2)
        z = z0
        for block in self.level3:
            z = block(z)
        x3 = self.b3(torch.cat([z0, z], 1))  # order: strided block first, then blocks
        return l1, x1, x2, x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)[-1])


def _deconv2x(ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(ch, ch, 2, stride=2, padding=0, output_padding=0, bias=False)


class ESPNet(nn.Module):
    """ESPNet with the light-weight (RUM) decoder; logits at the input resolution."""

    # PyTorch FX INT8 graphs keep the ESP modules' sums and concatenations in float
    # (`quant.fx_quant.FLOAT_OPS`; its PReLUs and their BatchNorms always are): per-tensor
    # requantization of each hierarchical sum crushes its small-range channels, and torch's
    # quantized cat warns that inputs of different scales lose accuracy. Every convolution stays
    # INT8. Torch static PTQ on CamVid val: 66.64 -> 69.83 mIoU (FP32 70.10; NOTES.md, session 10).
    fx_float_ops = ("add", "cat")

    def __init__(self, num_classes: int = 20, p: int = 2, q: int = 8, decoder_skip: DecoderSkip = "b1") -> None:
        super().__init__()
        if decoder_skip not in _SKIP_CHANNELS:
            raise ValueError(f"decoder_skip must be one of {sorted(_SKIP_CHANNELS)}, got {decoder_skip!r}")
        c = num_classes
        self.num_classes = c
        self.decoder_skip = decoder_skip
        self.encoder = ESPNetEncoder(c, p, q)
        self.level3_C = _c(128 + 3, c, 1)
        self.br = nn.BatchNorm2d(c, eps=_EPS)
        self.conv = _cbr(_SKIP_CHANNELS[decoder_skip] + c, c, 3)
        self.up_l3 = nn.Sequential(_deconv2x(c))
        self.combine_l2_l3 = nn.Sequential(_br(2 * c), ESPBlock(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(_deconv2x(c), _br(c))
        self.classifier = _deconv2x(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1, x1, x2, x3 = self.encoder.features(x)
        y3 = self.up_l3(self.br(self.encoder.classifier(x3)))  # 1/8 -> 1/4
        y2 = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(x2), y3], 1)))  # 1/4 -> 1/2
        skip = x1 if self.decoder_skip == "b1" else l1
        y1 = self.conv(torch.cat([y2, skip], 1))  # order: decoder first, then the skip
        return self.classifier(y1)  # 1/2 -> 1/1

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The official Cityscapes and CamVid checkpoints use different 1/2-scale skips (see the
        # module docstring); adopt whichever one the incoming weights were trained with. Children
        # are loaded after this hook, so the replaced `conv` receives its weights normally.
        w = state_dict.get(prefix + "conv.conv.weight")
        if w is not None and w.dim() == 4 and w.shape[0] == self.num_classes:
            for skip, ch in _SKIP_CHANNELS.items():
                if skip != self.decoder_skip and w.shape[1] == ch + self.num_classes:
                    old = self.conv.conv.weight
                    self.conv = _cbr(ch + self.num_classes, self.num_classes, 3).to(old.device, old.dtype)
                    self.decoder_skip = skip
                    break
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def espnet_p2q8(*, num_classes: int = 20, p: int = 2, q: int = 8, decoder_skip: DecoderSkip = "b1") -> nn.Module:
    return ESPNet(num_classes=num_classes, p=p, q=q, decoder_skip=decoder_skip)


register(ModelEntry(
    name="espnet_p2q8",
    task="segmentation",
    family="espnet",
    builder=espnet_p2q8,
    citation=("Mehta, Rastegari, Caspi, Shapiro, Hajishirzi, \"ESPNet: Efficient Spatial Pyramid of Dilated "
              "Convolutions for Semantic Segmentation\", ECCV 2018"),
    published=Published(
        params_m=0.365, num_classes=20, gmacs=4.85, gmacs_hw=(512, 1024),
        miou=60.3, miou_note="Cityscapes test (class mIoU 60.336, sacmehta/ESPNet README); CamVid test 55.64",
        source="sacmehta/ESPNet README and official checkpoint espnet_p_2_q_8.pth (parameters counted)",
    ),
    aliases=("espnet",),
    aux_weights=(),
    official_weights=(
        OfficialWeights(
            description="ESPNet p=2,q=8 CamVid (sacmehta/ESPNet pretrained/decoder)",
            num_classes=12,
            filename="espnet_p_2_q_8_camvid.pth",
            # BGR, 0-255 statistics; the official pipeline does ((x - mean) / std) / 255.
            preprocess={"bgr": True, "mean": [110.331, 108.409, 105.033],
                        "std": [72.126, 72.691, 69.904], "scale": 1 / 255},
        ),
        OfficialWeights(
            description="ESPNet p=2,q=8 Cityscapes (sacmehta/ESPNet pretrained/decoder)",
            num_classes=20,
            filename="espnet_p_2_q_8.pth",
            # Statistics hard-coded in the official test/VisualizeResults.py (BGR, 0-255), same
            # ((x - mean) / std) / 255 order; images resized to 1024x512 after normalising.
            preprocess={"bgr": True, "mean": [72.3923111, 82.90893555, 73.15840149],
                        "std": [45.3192215, 46.15289307, 44.91483307], "scale": 1 / 255},
        ),
    ),
))
