"""CamVid in the SegNet layout (11 classes + void), also the reader for the synthetic dataset.

Layout::

    root/{train,val,test}/*.png         RGB images
    root/{train,val,test}annot/*.png    8-bit class indices 0..10, 11 = void
    root/{split}.txt                    optional; only the file *names* are used (the SegNet
                                        list files carry absolute paths of the authors' machine)

Void (11) is remapped to 255 so every dataset in the zoo shares ``ignore_index`` = 255; a label
that is already 255 is accepted as void too (some re-exported copies do that).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from zoo.data.base import SegmentationFiles, resolve_splits
from zoo.data.cards import DatasetCard
from zoo.data.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
RAW_VOID = 11


def camvid_lut(num_classes: int = 11, raw_void: int = RAW_VOID, ignore: int = 255):
    """Raw SegNet label value -> train id, and which raw values are legal."""
    lut = np.full(256, ignore, dtype=np.uint8)
    lut[:num_classes] = np.arange(num_classes)
    valid = np.zeros(256, dtype=bool)
    valid[: raw_void + 1] = True
    valid[ignore] = True
    return lut, valid


def layout_hint(root: Path) -> str:
    return (f"expected {root}/{{train,val,test}}/*.png and {root}/{{train,val,test}}annot/*.png "
            "(SegNet layout)")


def segnet_pairs(root: Path, split: str, *, what: str = "CamVid",
                 known_splits: tuple[str, ...] = ("train", "val", "test"),
                 fix: str = "pass --data-root") -> list[tuple[Path, Path]]:
    """(image, label) pairs of one split (or 'a+b') of a SegNet-layout folder, in list order."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} root '{root}' not found: {layout_hint(root)}; {fix}")
    available = [s for s in known_splits
                 if (root / s).is_dir() and (root / f"{s}annot").is_dir()]
    parts = resolve_splits(split, available, known_splits, what=what, root=root,
                           layout=f"{root}/{{s}}/*.png and {root}/{{s}}annot/*.png (SegNet layout)")
    pairs: list[tuple[Path, Path]] = []
    for s in parts:
        pairs.extend(_split_pairs(root, s, what))
    return pairs


def _split_pairs(root: Path, split: str, what: str) -> list[tuple[Path, Path]]:
    img_dir, lab_dir = root / split, root / f"{split}annot"
    images = {p.name for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    labels = {p.name for p in lab_dir.iterdir() if p.suffix.lower() == ".png"}
    listing = root / f"{split}.txt"
    names: list[tuple[str, str]] = []
    if listing.is_file():
        for n, line in enumerate(listing.read_text().splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            img_name = Path(tokens[0]).name
            lab_name = Path(tokens[1]).name if len(tokens) > 1 else Path(img_name).stem + ".png"
            if img_name not in images:
                raise DataError(
                    f"{what} image '{img_dir / img_name}' listed in '{listing}' (line {n}) not "
                    f"found; restore it or delete '{listing}' to use the folder listing"
                )
            names.append((img_name, lab_name))
    else:
        names = [(n, Path(n).stem + ".png") for n in sorted(images)]
    if not names:
        raise DataError(f"{what} split '{split}' is empty: no images in '{img_dir}'")
    pairs = []
    for img_name, lab_name in names:
        if lab_name not in labels:
            raise DataError(
                f"{what} image '{img_dir / img_name}' has no label: expected "
                f"'{lab_dir / lab_name}'; add it or remove the image"
            )
        pairs.append((img_dir / img_name, lab_dir / lab_name))
    return pairs


class CamVid(SegmentationFiles):
    """CamVid (SegNet layout); see the module docstring."""


def build_camvid(card: DatasetCard, root: str | Path, split: str = "train",
                 transform: Callable | None = None, **kw: Any) -> CamVid:
    if kw:
        raise DataError(f"unexpected option(s) for camvid: {', '.join(sorted(kw))}")
    root = Path(root).expanduser()
    files = segnet_pairs(root, split, what="CamVid", known_splits=card.splits)
    lut, valid = camvid_lut(card.num_classes, int(card.extra.get("raw_void", RAW_VOID)),
                            card.ignore_index)
    return CamVid(card, files, lut=lut, valid_raw=valid, what="CamVid", transform=transform,
                  root=root, split=split)
