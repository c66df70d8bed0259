"""Datasets for the zoo: cards, loaders, pre-processing and augmentation.

Public API (others code against exactly these names)::

    from zoo.data import (load_card, build_dataset, DatasetCard, Sample, DataError, Preprocess,
                          TrainTransform, EvalTransform, list_datasets)

Each dataset has a YAML card in ``datasets/`` (classes, palette, ignore index, train mean/std,
default input size) and a loader that turns its on-disk layout into `Sample` objects with labels
already mapped to train ids (void / unlabelled = 255). ``synthetic`` needs no download: it is
generated on first use into a cache folder.

Detection datasets (cards with ``task: detection``) yield `DetSample` objects (image, boxes xyxy
in original pixels, contiguous class indices, image id) and know their COCO-format ground truth;
their ``format`` key picks the loader: ``coco`` (json), ``yolo`` (txt labels) or ``synthetic``
(the synthetic scenes' boxes, card ``synthetic-det``). See ``zoo.data.coco``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from zoo.data.base import Sample, SegmentationFiles
from zoo.data.coco import DetectionDataset, DetSample
from zoo.data.cards import DatasetCard, datasets_dir, list_datasets, load_card
from zoo.data.errors import DataError
from zoo.data.transforms import EvalTransform, Preprocess, TrainTransform

__all__ = [
    "DataError", "DatasetCard", "DetSample", "DetectionDataset", "EvalTransform", "Preprocess",
    "Sample", "SegmentationFiles", "TrainTransform", "build_dataset", "datasets_dir",
    "default_root", "list_datasets", "load_card",
]

DETECTION_FORMATS = ("coco", "yolo", "synthetic")


def _detection_builder(card: DatasetCard, fmt: str | None = None) -> Callable[..., Any]:
    fmt = str(fmt or card.extra.get("format") or "coco").lower()
    if fmt == "coco":
        from zoo.data.coco import build_coco
        return build_coco
    if fmt == "yolo":
        from zoo.data.yolo_format import build_yolo
        return build_yolo
    if fmt == "synthetic":
        from zoo.data.coco import build_synthetic_det
        return build_synthetic_det
    raise DataError(f"detection dataset {card.name!r} has format {fmt!r}; valid formats: "
                    f"{', '.join(DETECTION_FORMATS)}")


def _uses_synthetic_cache(card: DatasetCard) -> bool:
    return card.name == "synthetic" or card.extra.get("source") == "synthetic"


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
    if name == "synthetic-lt":
        from zoo.data.synthetic import build_synthetic_lt
        return build_synthetic_lt
    raise DataError(f"dataset {name!r} has a card but no loader; loaders exist for: "
                    "camvid, cityscapes, synthetic, synthetic-lt")


def default_root(name: str) -> Path:
    """Where a dataset is looked for when no root is given (the synthetic cache for synthetic)."""
    card = load_card(name)
    if _uses_synthetic_cache(card):
        from zoo.data.synthetic import cache_root
        return cache_root()
    return Path(card.default_root).expanduser()


def build_dataset(name: str, *, root: str | Path | None = None, split: str = "train",
                  transform: Callable[[Sample], Any] | None = None,
                  **kw: Any) -> SegmentationFiles | DetectionDataset:
    """Open one split of a dataset as a ``torch.utils.data.Dataset``.

    Items are ``transform(sample)`` or, without a transform, `Sample` objects. The dataset has
    ``.card`` and ``.files`` (list of (image_path, label_path)). ``split`` may join splits with
    '+' (e.g. "train+val"). Dataset-specific options go in ``kw`` (synthetic: ``num_images``,
    ``seed``, ``size``, ``progress``; synthetic-lt: those plus ``keep``, ``temperature``,
    ``select_seed``; cityscapes: ``labels``).

    Detection cards give a `DetectionDataset` (items `DetSample`); options: ``format`` to
    override the card's (``coco``/``yolo``/``synthetic``), coco: ``images``/``annotations``
    paths, yolo: ``names``, synthetic-det: those of synthetic.
    """
    card = load_card(name)
    if card.task == "detection":
        fmt = str(kw.pop("format", None) or card.extra.get("format") or "coco").lower()
        build = _detection_builder(card, fmt)
        if fmt == "synthetic":  # root: the synthetic cache, resolved by the generator
            return build(card, root, split, transform, **kw)
        if root is None and not (kw.get("images") and kw.get("annotations")):
            root = default_root(card.name)
        return build(card, Path(root).expanduser() if root is not None else None, split,
                     transform, **kw)
    build = _builder(card.name)
    if card.name == "synthetic":
        return build(card, root, split, transform, **kw)
    return build(card, Path(root).expanduser() if root is not None else default_root(card.name),
                 split, transform, **kw)
