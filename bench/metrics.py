"""Parity against the FP32 reference, in numpy (the cell process must not import torch).

The confusion matrix is `zoo.metrics.ConfusionMatrix`, which is numpy-only for this reason.
"""
from __future__ import annotations

import numpy as np

from zoo.metrics import ConfusionMatrix  # noqa: F401  (re-exported for the cell)


class Agreement:
    """Fraction of pixels (all of them, ignore label or not) where two masks give the same class."""

    def __init__(self) -> None:
        self.equal = 0
        self.total = 0

    def update(self, mask: np.ndarray, reference: np.ndarray) -> None:
        mask, reference = np.asarray(mask), np.asarray(reference)
        if mask.shape != reference.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the reference's {reference.shape}")
        self.equal += int(np.count_nonzero(mask == reference))
        self.total += int(mask.size)

    @property
    def value(self) -> float | None:
        return self.equal / self.total if self.total else None
