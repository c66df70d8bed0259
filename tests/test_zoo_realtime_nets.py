"""Contract tests for the real-time segmentation families PIDNet, BiSeNetV2 and PP-LiteSeg: the same
checks as tests/test_models.py, parametrized over these entries only (importing the modules registers
them, independent of zoo/families.py)."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import registry
from zoo.profile import count_gmacs, count_params
from zoo.seg import bisenetv2, pidnet, ppliteseg  # noqa: F401 - registers the entries
from zoo.layers import adaptive_avg_pool_by_slices

NAMES = ["pidnet_s", "bisenetv2", "ppliteseg_t"]
NUM_CLASSES = 11
HW = (64, 64)

# PP-LiteSeg-T: MODELS.md's counted figures (6.33 M / 8.97 GMACs) are of the zh320 re-implementation,
# whose decoder differs from PaddleSeg's (1x1 UAFM input convs, 32/64/128 widths, a 256-wide SPPM, a
# single 3x3 classifier). This module follows PaddleSeg's PPLiteSeg (3x3 UAFM convs, arm_out_chs
# 64/96/128, 128-wide SPPM, SegHead 3x3 64 + 1x1) and counts 8.20 M / 12.63 GMACs; its STDC1 backbone
# (5.32 M) plus STDC's classification layers gives the STDC paper's 8.44 M exactly.
COUNTED = {"pidnet_s": (7.626, 47.19), "bisenetv2": (3.359, 24.60), "ppliteseg_t": (8.204, 12.63)}


def _entry(name: str) -> registry.ModelEntry:
    return registry.get_entry(name)


def _build(name: str, num_classes: int = NUM_CLASSES, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return _entry(name).build(num_classes=num_classes, **kwargs)


def test_names_and_aliases_resolve():
    assert registry.resolve("pidnet") == "pidnet_s"
    assert registry.resolve("PIDNet-S") == "pidnet_s"
    assert registry.resolve("ppliteseg") == "ppliteseg_t"
    assert registry.resolve("bisenetv2") == "bisenetv2"


def _meta_model(name: str) -> nn.Module:
    entry = _entry(name)
    with torch.device("meta"):
        return entry.build(num_classes=entry.published.num_classes, aux=False)


@pytest.mark.parametrize("name", NAMES)
def test_counts_are_stable(name):
    # Our own counts (aux heads off, 19 classes), so a structural change shows up even where the
    # published figure does not apply.
    params_m, gmacs = COUNTED[name]
    assert count_params(_meta_model(name)) / 1e6 == pytest.approx(params_m, rel=1e-3)
    assert count_gmacs(_meta_model(name), _entry(name).published.gmacs_hw) == pytest.approx(gmacs, rel=1e-3)


def test_ppliteseg_adaptive_pool_equals_torch():
    for hw in [(2, 2), (12, 15), (3, 5), (8, 8), (1, 1)]:
        x = torch.randn(2, 3, *hw)
        for bins in (1, 2, 4):
            ref = F.adaptive_avg_pool2d(x, bins)
            assert torch.allclose(adaptive_avg_pool_by_slices(x, bins), ref, atol=1e-6)


def test_stdc1_backbone_matches_stdc_paper_size():
    # STDC1 in the STDC paper: 8.44 M parameters with its classification layers (conv_last 1x1
    # 1024->1024 + BN, fc 1024->1024 + BN, linear 1024->1000), which PP-LiteSeg does not build.
    backbone = ppliteseg.STDCNet(64, (2, 2, 2))
    cls_layers = (1024 * 1024 + 2 * 1024) * 2 + 1024 * 1000 + 1000
    assert (count_params(backbone) + cls_layers) / 1e6 == pytest.approx(8.44, abs=0.005)


def test_pidnet_has_no_boundary_head():
    model = _build("pidnet_s")
    assert not hasattr(model, "seghead_d") and model.seghead_p is not None
