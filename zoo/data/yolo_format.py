"""YOLO txt-label detection data (the Ultralytics layout).

Layout::

    root/images/{split}/*.jpg          images (any of .jpg .jpeg .png .bmp .webp .tif)
    root/labels/{split}/<stem>.txt     one line per box: ``class cx cy w h``, normalised 0..1

An image without a label file has no objects (background image), as in Ultralytics. The class
names come from a dataset card (``format: yolo``) or a ``names`` list. Labels are parsed when an
image is loaded (and all at once for the ground truth); a malformed line raises `DataError`
naming the file and the line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from zoo.data.cards import DatasetCard, card_from_dict
from zoo.data.coco import IMAGE_EXTS, DetectionDataset, ImageRecord, _empty_targets, image_size
from zoo.data.errors import DataError

_TOL = 1e-3  # normalised coordinates a hair outside 0..1 (rounding in exporters) are accepted


def names_card(names: Sequence[str], *, name: str = "yolo", root: str | Path = ".",
               splits: Sequence[str] = ("train", "val", "test"),
               input_size: tuple[int, int] = (640, 640)) -> DatasetCard:
    """A detection card for a YOLO folder described only by its class names."""
    return card_from_dict({"name": name, "task": "detection", "format": "yolo",
                           "classes": [str(n) for n in names], "num_classes": len(names),
                           "input_size": list(input_size), "default_root": str(root),
                           "splits": list(splits)}, source=f"<names of {root}>")


def parse_label_file(path: Path, num_classes: int, width: int,
                     height: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes xyxy float32 pixels, classes int64) from one YOLO label file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _empty_targets()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read label '{path}': {e}") from None
    rows: list[list[float]] = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        shown = line.strip()[:60]
        if len(tokens) != 5:
            raise DataError(f"label '{path}' line {n}: expected 5 values 'class cx cy w h', got "
                            f"{len(tokens)} ({shown!r})")
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise DataError(f"label '{path}' line {n}: not numbers ({shown!r}); expected "
                            "'class cx cy w h'") from None
        c = values[0]
        if c != int(c) or not 0 <= c < num_classes:
            raise DataError(f"label '{path}' line {n}: class {tokens[0]} is not an integer in "
                            f"0..{num_classes - 1} ({num_classes} class names)")
        cx, cy, w, h = values[1:]
        if not (w > 0 and h > 0) or min(cx - w / 2, cy - h / 2) < -_TOL \
                or max(cx + w / 2, cy + h / 2) > 1 + _TOL:
            raise DataError(f"label '{path}' line {n}: box ({shown!r}) is not normalised 0..1 "
                            "with positive size; YOLO labels are 'class cx cy w h' / image size")
        rows.append(values)
    if not rows:
        return _empty_targets()
    a = np.asarray(rows, dtype=np.float64)
    cx, cy, w, h = a[:, 1] * width, a[:, 2] * height, a[:, 3] * width, a[:, 4] * height
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes.astype(np.float32), a[:, 0].astype(np.int64)


class YoloDetection(DetectionDataset):
    """One split of a YOLO-format folder; see the module docstring."""

    def __init__(self, card: DatasetCard, root: str | Path, split: str = "val", *,
                 transform: Callable | None = None) -> None:
        root = Path(root).expanduser()
        records: list[ImageRecord] = []
        labels: list[Path] = []
        for part in (p.strip() for p in split.split("+")):
            img_dir = root / "images" / part
            if not img_dir.is_dir():
                have = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) \
                    if (root / "images").is_dir() else []
                raise DataError(f"YOLO split {part!r} not found: expected '{img_dir}' (and "
                                f"'{root / 'labels' / part}'); available: "
                                f"{', '.join(have) or 'none'}")
            files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise DataError(f"YOLO split {part!r} is empty: no images in '{img_dir}'")
            for p in files:
                records.append(ImageRecord(p, 0))
                labels.append(root / "labels" / part / f"{p.stem}.txt")
        # numeric file names are COCO-style ids; otherwise (or on a clash) the position + 1
        stems = [r.path.stem for r in records]
        if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
            ids = [int(s) for s in stems]
        else:
            ids = list(range(1, len(records) + 1))
        records = [ImageRecord(r.path, i) for r, i in zip(records, ids)]
        super().__init__(card, records, transform=transform, root=root, split=split)
        self.label_files = labels
        self._sizes: dict[int, tuple[int, int]] = {}
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _size(self, index: int) -> tuple[int, int]:
        if index not in self._sizes:
            self._sizes[index] = image_size(self.images[index].path)
        return self._sizes[index]

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            w, h = self._size(index)
            self._cache[index] = parse_label_file(self.label_files[index],
                                                  self.card.num_classes, w, h)
        return self._cache[index]

    def coco_gt(self) -> dict[str, Any]:
        for i in range(len(self)):  # fill in the sizes so the base class needs no second read
            w, h = self._size(i)
            r = self.images[i]
            self.images[i] = ImageRecord(r.path, r.image_id, w, h)
        return super().coco_gt()


def build_yolo(card: DatasetCard | None, root: str | Path | None, split: str = "val",
               transform: Callable | None = None, *, names: Sequence[str] | None = None,
               **kw: Any) -> YoloDetection:
    """Open a YOLO-format split; ``names`` replaces (or stands in for) the card's classes."""
    if kw:
        raise DataError(f"unexpected option(s) for YOLO-format data: {', '.join(sorted(kw))} "
                        "(valid: names)")
    if root is None:
        raise DataError("YOLO-format data needs a root folder (--data-root)")
    if names is not None:
        card = names_card(names, root=root, name=card.name if card is not None else "yolo")
    if card is None:
        raise DataError("YOLO-format data needs class names: a dataset card or names=[...]")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"YOLO root '{root}' not found: expected root/images/{split}/*.jpg and "
                        f"root/labels/{split}/*.txt")
    return YoloDetection(card, root, split, transform=transform)
