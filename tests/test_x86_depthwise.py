"""quant.x86_depthwise: non-negative symmetric activations reach PyTorch's x86 INT8 kernels
as bytes 0..127, so that fbgemm's depthwise kernels (saturating int16 pair sums) compute what the
fake-quantized graph trained."""
import copy

import pytest
import torch
import torch.nn as nn

from quant import fx_quant
from quant.x86_depthwise import nonnegative_nodes, reencode_nonnegative

pytestmark = pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines,
                                reason="the x86 quantized engine is not available on this machine")


class _InvertedResidual(nn.Module):
    """MobileNetV2-style: expand + ReLU, depthwise + ReLU, linear projection, skip sum (signed)."""

    def __init__(self, c: int = 16, hidden: int = 384):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1), nn.BatchNorm2d(c))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        s = self.stem(x)
        y = s + self.project(self.dw(self.expand(s)))          # signed
        g = torch.nn.functional.interpolate(self.pool(s), size=s.shape[-2:], mode="bilinear")  # non-negative
        return torch.cat([y, g], 1), torch.cat([s, g], 1) - 1.0


def _trained_qat_graph() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    net = _InvertedResidual()
    with torch.no_grad():  # the saturating case: depthwise weights near their channel maximum
        net.dw[0].weight.copy_(torch.sign(torch.randn_like(net.dw[0].weight)))
        net.expand[1].bias.fill_(3.0)  # and inputs mostly far above zero (bytes ~190 at zero point 128)
    prepared = fx_quant.prepare(net, qat=True, input_hw=(16, 16))
    prepared.train()
    fx_quant.freeze_bn_stats(prepared)  # folded weights fixed, so the weight ranges fit them (levels up to 127)
    for _ in range(4):
        prepared(torch.randn(2, 3, 16, 16) * 2)
    prepared.eval()
    fx_quant.freeze_observers(prepared)
    return prepared


def test_nonnegative_nodes_follow_relus_and_sign_keeping_ops():
    prepared = _trained_qat_graph()
    nonneg = {n.name for n in nonnegative_nodes(prepared)}
    names = {n.name: n for n in prepared.graph.nodes}
    relu_convs = [n for n in names if n.startswith(("stem", "expand", "dw"))]
    assert relu_convs and all(n in nonneg for n in relu_convs)
    assert not any(n.startswith("project") for n in nonneg)  # linear projection: signed
    assert "add" not in nonneg  # relu output + signed projection
    assert "interpolate" in nonneg  # resized average of a ReLU output
    assert "cat" not in nonneg and "cat_1" in nonneg  # with and without the signed sum
    assert "sub" not in nonneg  # x - 1 can be negative


def test_reencoding_keeps_the_fake_quantized_values_and_fixes_depthwise_kernels():
    prepared = _trained_qat_graph()
    x = torch.randn(1, 3, 16, 16) * 2
    with torch.no_grad():
        before = prepared(x)
        reencoded = copy.deepcopy(prepared)
        names = reencode_nonnegative(reencoded)
        after = reencoded(x)
    assert names
    for a, b in zip(before, after):
        assert torch.equal(a, b)  # same grid, same values, to the last bit
    for name in names:
        fq = reencoded.get_submodule(name)
        assert int(fq.zero_point) == 0 and (fq.quant_min, fq.quant_max) == (0, 127)
        assert float(fq.scale) == float(prepared.get_submodule(name).scale)
    # signed tensors keep zero point 128: the input, the projection, the sum
    kept = [n for n, m in reencoded.named_modules() if hasattr(m, "zero_point") and not n.endswith("weight_fake_quant")
            and m.zero_point.numel() == 1 and int(m.zero_point) == 128]
    assert kept
    # Through convert_int8 (which re-encodes) every INT8 module computes what its fake-quantized
    # twin does up to rounding ties (> 35 dB); the depthwise conv fed bytes 128..255 did not.
    int8 = fx_quant.convert_int8(prepared, warn=False)
    sqnr = fx_quant.int8_layer_sqnr(prepared, int8, x)
    assert sqnr and min(sqnr.values()) > 35.0, sqnr
    with torch.no_grad():
        out = int8(x)
    assert fx_quant.sqnr_db(before[0], out[0]) > 25.0


class _LinearDepthwise(nn.Module):
    """A depthwise convolution fed by a linear (signed) projection: nothing to re-encode."""

    def __init__(self, c: int = 16, hidden: int = 384):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.BatchNorm2d(hidden))
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU())
        self.project = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        return self.project(self.dw(self.expand(self.stem(x))))


def test_depthwise_weights_on_signed_inputs_are_narrowed_to_seven_bits():
    torch.manual_seed(0)
    net = _LinearDepthwise()
    with torch.no_grad():  # weights at their channel maximum, inputs mostly far above zero
        net.dw[0].weight.copy_(torch.sign(torch.randn_like(net.dw[0].weight)))
        net.expand[1].bias.fill_(3.0)
    prepared = fx_quant.prepare(net, qat=True, input_hw=(16, 16))
    prepared.train()
    fx_quant.freeze_bn_stats(prepared)
    for _ in range(4):
        prepared(torch.randn(2, 3, 16, 16) * 2)
    prepared.eval()
    fx_quant.freeze_observers(prepared)
    int8 = fx_quant.convert_int8(prepared, warn=False)
    levels = int8.get_submodule("dw.0").weight().int_repr()
    assert int(levels.abs().max()) == 64  # +-1 weights: 127 levels become exactly 64
    x = torch.randn(1, 3, 16, 16) * 2
    with torch.no_grad():
        # fbgemm's saturating pair sums made this 1 dB before the weights were narrowed
        assert fx_quant.sqnr_db(prepared(x), int8(x)) > 40.0


def _mobilenet_block() -> nn.Module:
    """MobileNetV2's pattern: conv + BN + ReLU6, then a wide depthwise conv + BN + ReLU6."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 128, 1), nn.BatchNorm2d(128), nn.ReLU6(inplace=True)),
        nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, groups=128), nn.BatchNorm2d(128), nn.ReLU6(inplace=True)),
        nn.Conv2d(128, 8, 1))


def test_relu6_gets_a_quantizer_of_its_own_and_its_depthwise_input_is_reencoded():
    torch.manual_seed(0)
    net = _mobilenet_block().eval()
    x = torch.randn(2, 3, 16, 16) * 3
    split = copy.deepcopy(net)
    assert fx_quant.split_relu6(split) == ["0.2", "1.2"]
    with torch.no_grad():
        assert torch.equal(split(x), net(x))  # the same function
    prepared = fx_quant.prepare(net.train(), qat=True, input_hw=(16, 16))
    for _ in range(3):
        prepared(torch.randn(2, 3, 16, 16) * 3)
    prepared.eval()
    fused = [n for n, m in prepared.named_modules() if type(m).__name__ == "ConvBnReLU2d"]
    assert len(fused) == 2  # the ReLU went into each convolution
    # The quantizer after each fused convolution saw only its non-negative output (before the split
    # it was the quantizer of the signed BN output, shared with ReLU6).
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.target in fused:
            (quantizer,) = node.users
            fq = prepared.get_submodule(quantizer.target)
            assert float(fq.activation_post_process.min_val) == 0.0 and float(fq.activation_post_process.max_val) > 0
    reencoded = reencode_nonnegative(copy.deepcopy(prepared))
    assert len(reencoded) == 1  # the depthwise conv's input: bytes 0..127 for fbgemm
