"""Parameter and MAC counting (MACs from torch's own FLOP counter, which counts 2 FLOPs per MAC)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: nn.Module, input_hw: tuple[int, int], batch: int = 1) -> float:
    """Multiply-accumulates of one forward pass in eval mode, in billions.

    Like fvcore (the counter behind the published figures), only convolutions and matrix
    products are counted; element-wise ops, pooling and resizes are not.
    """
    # A copy on the meta device: shapes only, no arithmetic, so even 1024x2048 is instant.
    shadow = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(batch, 3, *input_hw, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        shadow(x)
    return counter.get_total_flops() / 2 / 1e9
