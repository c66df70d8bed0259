"""Contract tests for the DeepLabV3+, LiteSeg, FastDepthSeg and EfficientPS-semantic entries.

The same checks as tests/test_models.py, parametrized over these entries by name (importing the family
modules registers them, whether or not zoo/families.py imports them yet).
"""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.conftest import assert_onnx_matches_torch, calibrate_bn
from zoo import registry
from zoo.seg import deeplabv3plus, efficientps, fastdepthseg, liteseg  # noqa: F401  (registers)
from zoo.layers import adaptive_avg_pool_by_slices

NAMES = ["deeplabv3plus_mobilenetv2", "deeplabv3plus_resnet101", "liteseg_mobilenetv2", "fastdepthseg",
         "efficientps_b0_semantic"]
NUM_CLASSES = 11
HW = (64, 64)


def _entry(name: str) -> registry.ModelEntry:
    return registry._ENTRIES[name]


def _build(name: str, num_classes: int = NUM_CLASSES, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return _entry(name).build(num_classes=num_classes, **kwargs)


def test_names_and_aliases_registered():
    for name in NAMES:
        assert name in registry._ENTRIES
    assert registry._ALIASES["deeplabv3plus"] == "deeplabv3plus_mobilenetv2"
    assert registry._ALIASES["liteseg"] == "liteseg_mobilenetv2"
    assert registry._ALIASES["efficientps"] == "efficientps_b0_semantic"


def test_fastdepthseg_dla_friendly_variant():
    model = _build("fastdepthseg", dla_friendly=True).eval()
    assert not any(isinstance(m, fastdepthseg.AdaptivePool)
                   for m in model.modules())
    for hw in (HW, (352, 480)):
        with torch.no_grad():
            out = model(torch.randn(1, 3, *hw))
        assert out.shape == (1, NUM_CLASSES, *hw) and torch.isfinite(out).all()


def test_fastdepthseg_dla_friendly_exports():
    # The default build of every entry is covered by tests/test_models.py.
    assert_onnx_matches_torch(calibrate_bn(_build("fastdepthseg", dla_friendly=True)), HW)


@pytest.mark.parametrize("hw", [(2, 2), (12, 15), (32, 64)])
def test_fastdepthseg_export_pooling_equals_adaptive_pool(hw, monkeypatch):
    x = torch.randn(1, 4, *hw)
    ref = [F.adaptive_avg_pool2d(x, b) for b in (1, 2, 3, 6)]
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    for b, r in zip((1, 2, 3, 6), ref):
        assert torch.allclose(adaptive_avg_pool_by_slices(x, b), r, atol=1e-6)
