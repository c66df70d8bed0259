"""Segmentation losses used by the training recipes."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy (the DDRNet/HRNet recipe).

    Keeps the pixels whose predicted probability of the true class is below `thresh`, but never
    fewer than `min_kept` pixels (the hardest ones), so easy batches still give a gradient.
    """

    def __init__(self, ignore_index: int = 255, thresh: float = 0.9, min_kept: int = 131072, weight=None):
        super().__init__()
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = max(1, min_kept)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel_loss = F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, reduction="none"
        ).reshape(-1)
        valid = target.reshape(-1) != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0  # keeps the graph (DDP needs every parameter used)
        losses = pixel_loss[valid]
        with torch.no_grad():
            prob = F.softmax(logits, dim=1).gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1))
            prob = prob.reshape(-1)[valid]
            k = min(self.min_kept, prob.numel()) - 1
            kth = prob.kthvalue(k + 1).values if k >= 0 else prob.max()
            threshold = torch.maximum(kth, torch.tensor(self.thresh, dtype=prob.dtype))
            keep = prob < threshold
            if not keep.any():
                keep = prob <= threshold
        return losses[keep].mean()


def build_loss(name: str, *, ignore_index: int = 255, **kwargs) -> nn.Module:
    if name == "ohem":
        return OhemCrossEntropy(ignore_index=ignore_index, **kwargs)
    if name == "ce":
        return nn.CrossEntropyLoss(ignore_index=ignore_index)
    raise ValueError(f"unknown loss {name!r}; valid losses: ce, ohem")
