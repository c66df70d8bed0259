"""Cityscapes (fine annotations), official layout, evaluated on the 19 standard train ids.

Layout::

    root/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png
    root/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png

We read ``labelIds`` (what the official download contains) and map them to train ids with a
256-entry lookup table, so users need not run ``createTrainIdLabelImgs`` first. Passing
``labels="labelTrainIds"`` reads pre-converted ``*_gtFine_labelTrainIds.png`` instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from zoo.data.base import SegmentationFiles, resolve_splits
from zoo.data.cards import DatasetCard
from zoo.data.errors import DataError

# labelId -> trainId for the 19 evaluated classes (cityscapesScripts' labels.py); every other
# id (unlabeled, ego vehicle, ..., caravan, trailer, license plate) is ignored.
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
MAX_LABEL_ID = 33
IMG_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = {"labelIds": "_gtFine_labelIds.png", "labelTrainIds": "_gtFine_labelTrainIds.png"}


def cityscapes_lut(ignore: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """labelIds -> trainIds table and legal raw values (0..33; 255 is how -1 ends up in uint8)."""
    lut = np.full(256, ignore, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    valid = np.zeros(256, dtype=bool)
    valid[: MAX_LABEL_ID + 1] = True
    valid[255] = True
    return lut, valid


def train_id_lut(num_classes: int = 19, ignore: int = 255) -> tuple[np.ndarray, np.ndarray]:
    lut = np.full(256, ignore, dtype=np.uint8)
    lut[:num_classes] = np.arange(num_classes)
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    valid[ignore] = True
    return lut, valid


def layout_hint(root: Path, split: str = "{train,val,test}", kind: str = "labelIds") -> str:
    return (f"expected {root}/leftImg8bit/{split}/<city>/*{IMG_SUFFIX} and "
            f"{root}/gtFine/{split}/<city>/*{LABEL_SUFFIXES[kind]}")


def cityscapes_pairs(root: Path, split: str, *, known_splits: tuple[str, ...],
                     labels: str = "labelIds") -> list[tuple[Path, Path]]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Cityscapes root '{root}' not found: {layout_hint(root, kind=labels)}; "
                        "pass --data-root")
    available = [s for s in known_splits
                 if (root / "leftImg8bit" / s).is_dir() and (root / "gtFine" / s).is_dir()]
    parts = resolve_splits(split, available, known_splits, what="Cityscapes", root=root,
                           layout=layout_hint(root, "{s}", labels))
    suffix = LABEL_SUFFIXES[labels]
    pairs: list[tuple[Path, Path]] = []
    for s in parts:
        img_root, lab_root = root / "leftImg8bit" / s, root / "gtFine" / s
        found = 0
        for city in sorted(p for p in img_root.iterdir() if p.is_dir()):
            lab_city = lab_root / city.name
            lab_names = {p.name for p in lab_city.iterdir()} if lab_city.is_dir() else set()
            for img in sorted(city.glob(f"*{IMG_SUFFIX}")):
                lab_name = img.name[: -len(IMG_SUFFIX)] + suffix
                if lab_name not in lab_names:
                    raise DataError(
                        f"Cityscapes image '{img}' has no label: expected '{lab_city / lab_name}'"
                        "; unpack gtFine_trainvaltest.zip into the same root"
                    )
                pairs.append((img, lab_city / lab_name))
                found += 1
        if not found:
            raise DataError(f"Cityscapes split '{s}' is empty: no <city>/*{IMG_SUFFIX} under "
                            f"'{img_root}'")
    return pairs


class Cityscapes(SegmentationFiles):
    """Cityscapes fine annotations; see the module docstring."""


def build_cityscapes(card: DatasetCard, root: str | Path, split: str = "train",
                     transform: Callable | None = None, *, labels: str = "labelIds",
                     **kw: Any) -> Cityscapes:
    if kw:
        raise DataError(f"unexpected option(s) for cityscapes: {', '.join(sorted(kw))}")
    if labels not in LABEL_SUFFIXES:
        raise DataError(f"cityscapes labels must be one of {', '.join(LABEL_SUFFIXES)}, "
                        f"got {labels!r}")
    root = Path(root).expanduser()
    files = cityscapes_pairs(root, split, known_splits=card.splits, labels=labels)
    if labels == "labelIds":
        lut, valid = cityscapes_lut(card.ignore_index)
    else:
        lut, valid = train_id_lut(card.num_classes, card.ignore_index)
    return Cityscapes(card, files, lut=lut, valid_raw=valid, what=f"Cityscapes {labels}",
                      transform=transform, root=root, split=split)
