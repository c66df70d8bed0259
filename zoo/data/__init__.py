"""Datasets for the zoo: cards, loaders, pre-processing and augmentation.

Public API (others code against exactly these names)::

    from zoo.data import (load_card, build_dataset, DatasetCard, Sample, DataError, Preprocess,
                          TrainTransform, EvalTransform, list_datasets)

Each dataset has a YAML card in ``datasets/`` (classes, palette, ignore index, train mean/std,
default input size) and a loader that turns its on-disk layout into `Sample` objects with labels
already mapped to train ids (void / unlabelled = 255). ``synthetic`` needs no download: it is
generated on first use into a cache folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from zoo.data.base import Sample, SegmentationFiles
from zoo.data.cards import DatasetCard, datasets_dir, list_datasets, load_card
from zoo.data.errors import DataError
from zoo.data.transforms import EvalTransform, Preprocess, TrainTransform

__all__ = [
    "DataError", "DatasetCard", "EvalTransform", "Preprocess", "Sample", "SegmentationFiles",
    "TrainTransform", "build_dataset", "datasets_dir", "default_root", "list_datasets",
    "load_card",
]


def _builder(name: str) -> Callable[..., SegmentationFiles]:
    # Imported lazily so that reading a card never pays for (or fails on) a loader's imports.
    if name == "camvid":
        from zoo.data.camvid import build_camvid
        return build_camvid
    if name == "cityscapes":
        from zoo.data.cityscapes import build_cityscapes
        return build_cityscapes
    if name == "synthetic":
        from zoo.data.synthetic import build_synthetic
        return build_synthetic
    raise DataError(f"dataset {name!r} has a card but no loader; loaders exist for: "
                    "camvid, cityscapes, synthetic")


def default_root(name: str) -> Path:
    """Where a dataset is looked for when no root is given (the synthetic cache for synthetic)."""
    card = load_card(name)
    if card.name == "synthetic":
        from zoo.data.synthetic import cache_root
        return cache_root()
    return Path(card.default_root).expanduser()


def build_dataset(name: str, *, root: str | Path | None = None, split: str = "train",
                  transform: Callable[[Sample], Any] | None = None,
                  **kw: Any) -> SegmentationFiles:
    """Open one split of a dataset as a ``torch.utils.data.Dataset``.

    Items are ``transform(sample)`` or, without a transform, `Sample` objects. The dataset has
    ``.card`` and ``.files`` (list of (image_path, label_path)). ``split`` may join splits with
    '+' (e.g. "train+val"). Dataset-specific options go in ``kw`` (synthetic: ``num_images``,
    ``seed``, ``size``, ``progress``; cityscapes: ``labels``).
    """
    card = load_card(name)
    build = _builder(card.name)
    if card.name == "synthetic":
        return build(card, root, split, transform, **kw)
    return build(card, Path(root).expanduser() if root is not None else default_root(card.name),
                 split, transform, **kw)
