"""Detection datasets: COCO json, and the synthetic scenes' boxes; shared `DetectionDataset` base.

Every detection loader yields `DetSample` (image HxWx3 uint8 RGB, boxes xyxy float32 in original
pixels, contiguous class indices 0..nc-1, the image id) and can hand the evaluation its ground
truth in COCO format (`DetectionDataset.ground_truth`): the *original* json for COCO (crowd boxes
included, as pycocotools expects), a json built from the labels for the other formats, so one
pycocotools evaluation (`zoo.det.coco_eval`) serves them all.

COCO layout (``format: coco`` cards)::

    root/{train,val}2017/*.jpg
    root/annotations/instances_{train,val}2017.json

or explicit ``images=`` / ``annotations=`` paths. The card's ``category_ids`` map the contiguous
class index to the json's category id (COCO: 80 indices -> ids 1..90 with gaps). Training
targets drop ``iscrowd`` boxes and boxes with no area after clipping to the image.

YOLO txt labels: `zoo.data.yolo_format`. Synthetic boxes: `SyntheticDetection` below.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from zoo.data.base import read_rgb
from zoo.data.cards import DatasetCard
from zoo.data.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class DetSample:
    """One image with its boxes: ``boxes`` (K, 4) xyxy float32 original pixels, ``classes`` (K,)."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    image_id: int
    name: str


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    image_id: int
    width: int | None = None  # known from the annotation file (COCO); else read on demand
    height: int | None = None


def _empty_targets() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"image '{path}' disappeared since the dataset was listed") from None
    except OSError as e:
        raise DataError(f"cannot read image '{path}': {e}; re-download or remove it") from None


class DetectionDataset(torch.utils.data.Dataset):
    """Images plus boxes; subclasses say where the boxes come from (`targets`).

    ``category_ids[i]`` is the ground-truth json id of class index ``i``; ``index_of`` is the
    inverse. Items are ``transform(sample)`` or `DetSample` objects.
    """

    def __init__(self, card: DatasetCard, images: Sequence[ImageRecord], *,
                 category_ids: Sequence[int] | None = None,
                 transform: Callable[[DetSample], Any] | None = None,
                 root: Path | None = None, split: str = "") -> None:
        self.card = card
        self.images = list(images)
        self.transform = transform
        self.root = root
        self.split = split
        ids = category_ids if category_ids is not None else card.extra.get("category_ids")
        self.category_ids: tuple[int, ...] = (tuple(int(i) for i in ids) if ids is not None
                                              else tuple(range(card.num_classes)))
        if len(self.category_ids) != card.num_classes:
            raise DataError(f"dataset {card.name!r}: {len(self.category_ids)} category ids for "
                            f"{card.num_classes} classes")
        self.index_of: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.images]

    @property
    def files(self) -> list[Path]:
        return [r.path for r in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def name_of(self, index: int) -> str:
        return self.images[index].path.stem

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (K, 4) xyxy float32 original pixels, classes (K,) int64) of one image."""
        raise NotImplementedError

    def load(self, index: int) -> DetSample:
        rec = self.images[index]
        image = read_rgb(rec.path)
        boxes, classes = self.targets(index)
        return DetSample(image=image, boxes=boxes, classes=classes, image_id=rec.image_id,
                         name=rec.path.stem)

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def ground_truth(self) -> str | Path | dict[str, Any]:
        """COCO-format ground truth for pycocotools: a json path or an in-memory dict."""
        return self.coco_gt()

    def coco_gt(self) -> dict[str, Any]:
        """A COCO-format dict built from `targets` (every box, iscrowd 0, area = box area)."""
        images, annotations = [], []
        for i, rec in enumerate(self.images):
            w, h = (rec.width, rec.height) if rec.width and rec.height else image_size(rec.path)
            images.append({"id": rec.image_id, "file_name": rec.path.name, "width": int(w),
                           "height": int(h)})
            boxes, classes = self.targets(i)
            for b, c in zip(boxes.tolist(), classes.tolist()):
                bw, bh = b[2] - b[0], b[3] - b[1]
                annotations.append({"id": len(annotations) + 1, "image_id": rec.image_id,
                                    "category_id": self.category_ids[c],
                                    "bbox": [b[0], b[1], bw, bh], "area": bw * bh,
                                    "iscrowd": 0})
        categories = [{"id": cid, "name": name}
                      for cid, name in zip(self.category_ids, self.card.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def write_coco_gt(self, path: str | Path) -> Path:
        """Write `coco_gt` as json (e.g. to score detections with other COCO tools)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.coco_gt()))
        return path

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.card.name!r}, split={self.split!r}, "
                f"root='{self.root}', n={len(self)})")


# --------------------------------------------------------------------------------------------
# COCO json
# --------------------------------------------------------------------------------------------

class CocoDetection(DetectionDataset):
    """A COCO instances json plus its image folder; see the module docstring."""

    def __init__(self, card: DatasetCard, images_dir: str | Path, annotations: str | Path, *,
                 transform: Callable[[DetSample], Any] | None = None, split: str = "",
                 root: Path | None = None) -> None:
        images_dir = Path(images_dir).expanduser()
        ann_file = Path(annotations).expanduser()
        if not ann_file.is_file():
            raise DataError(f"COCO annotation file '{ann_file}' not found; expected "
                            "root/annotations/instances_{split}2017.json or pass annotations=")
        if not images_dir.is_dir():
            raise DataError(f"COCO image folder '{images_dir}' not found; expected "
                            "root/{split}2017/ or pass images=")
        try:
            data = json.loads(ann_file.read_text())
            json_images = data["images"]
            json_anns = data.get("annotations", [])
            json_cats = data.get("categories", [])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"'{ann_file}' is not a COCO instances json ({type(e).__name__}: "
                            f"{e})") from None
        card_ids = card.extra.get("category_ids")
        if card_ids is None:  # a card without a map: the json's categories in id order
            card_ids = sorted(int(c["id"]) for c in json_cats)
            if len(card_ids) != card.num_classes:
                raise DataError(f"'{ann_file}' has {len(card_ids)} categories but dataset "
                                f"{card.name!r} has {card.num_classes} classes; add "
                                "category_ids to its card")
        super().__init__(card, [], category_ids=card_ids, transform=transform,
                         root=root if root is not None else images_dir.parent, split=split)
        unknown = sorted({int(c["id"]) for c in json_cats} - set(self.index_of))
        if unknown:
            raise DataError(f"'{ann_file}' has category id(s) {unknown[:5]} not in the "
                            f"category_ids of dataset {card.name!r}; is it the right card?")
        self.ann_file = ann_file
        self.images_dir = images_dir
        records = []
        missing = []
        for im in sorted(json_images, key=lambda d: d["file_name"]):
            p = images_dir / im["file_name"]
            if not p.is_file():
                missing.append(p)
                continue
            records.append(ImageRecord(p, int(im["id"]), int(im["width"]), int(im["height"])))
        if missing:
            raise DataError(f"{len(missing)} image(s) listed in '{ann_file}' are missing from "
                            f"'{images_dir}' (first: '{missing[0].name}'); restore them or use "
                            "the matching annotation file")
        if not records:
            raise DataError(f"'{ann_file}' lists no images")
        self.images = records
        self._targets = self._index_annotations(json_anns, records, ann_file)

    def _index_annotations(self, anns, records, ann_file):
        by_image: dict[int, list[tuple[list[float], int]]] = {r.image_id: [] for r in records}
        for a in anns:
            if a.get("iscrowd", 0):  # crowd regions are "ignore" areas for evaluation only
                continue
            lst = by_image.get(int(a["image_id"]))
            if lst is None:
                continue
            cid = int(a["category_id"])
            if cid not in self.index_of:
                raise DataError(f"'{ann_file}': annotation {a.get('id')} has category id {cid} "
                                f"not in dataset {self.card.name!r}")
            lst.append((a["bbox"], self.index_of[cid]))
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for r in records:
            items = by_image[r.image_id]
            if not items:
                out[r.image_id] = _empty_targets()
                continue
            xywh = np.asarray([b for b, _ in items], dtype=np.float64).reshape(-1, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, r.width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, r.height)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            classes = np.asarray([c for _, c in items], dtype=np.int64)
            out[r.image_id] = (boxes[keep].astype(np.float32), classes[keep])
        return out

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._targets[self.images[index].image_id]

    def ground_truth(self) -> Path:
        """The original annotation json (evaluation restricts imgIds to this dataset's images)."""
        return self.ann_file


def coco_split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, annotation json) of a split in the standard COCO 2017 layout."""
    tag = split if split.endswith(("2014", "2017")) else f"{split}2017"
    return root / tag, root / "annotations" / f"instances_{tag}.json"


def build_coco(card: DatasetCard, root: str | Path | None, split: str = "val",
               transform: Callable | None = None, *, images: str | Path | None = None,
               annotations: str | Path | None = None, **kw: Any) -> CocoDetection:
    """Open a COCO-format split: ``root/{split}2017`` + ``root/annotations/instances_{split}2017
    .json``, or explicit ``images`` (folder) and ``annotations`` (json) paths."""
    if kw:
        raise DataError(f"unexpected option(s) for COCO-format data: {', '.join(sorted(kw))} "
                        "(valid: images, annotations)")
    if "+" in split:
        raise DataError(f"COCO-format data cannot join splits ({split!r}): evaluation needs one "
                        "annotation file; pass one split")
    if (images is None or annotations is None) and root is None:
        raise DataError("COCO-format data needs --data-root (or images= and annotations=)")
    if root is not None:
        root = Path(root).expanduser()
        if images is None or annotations is None:
            if not root.is_dir():
                raise DataError(f"COCO root '{root}' not found: expected root/{split}2017/*.jpg "
                                f"and root/annotations/instances_{split}2017.json; pass "
                                "--data-root")
            known = set(card.splits)
            if split not in known and not split.endswith(("2014", "2017")):
                raise DataError(f"unknown {card.name} split {split!r}; valid splits: "
                                f"{', '.join(card.splits)}")
        img_dir, ann = coco_split_paths(root, split)
        images = images if images is not None else img_dir
        annotations = annotations if annotations is not None else ann
    return CocoDetection(card, images, annotations, transform=transform, split=split,
                         root=root)


# --------------------------------------------------------------------------------------------
# the synthetic scenes as a detection dataset
# --------------------------------------------------------------------------------------------

class SyntheticDetection(DetectionDataset):
    """The synthetic street scenes' instance boxes as a detection dataset.

    Reads the same generated cache as ``synthetic`` (generating it on first use); the boxes come
    from ``{split}_boxes.json`` (x1/y1 exclusive pixel indices, i.e. pixel-edge coordinates,
    so they are used as they are). ``seg`` is the underlying `SyntheticDataset`.
    """

    def __init__(self, card: DatasetCard, seg: Any, *,
                 transform: Callable[[DetSample], Any] | None = None) -> None:
        h, w = (int(v) for v in (seg.manifest.get("size") or seg.card.input_size))
        # image id = position + 1 (unique across joined splits; ids of 0 confuse some tools)
        records = [ImageRecord(p, i + 1, w, h) for i, (p, _) in enumerate(seg.files)]
        super().__init__(card, records, transform=transform, root=seg.root, split=seg.split)
        self.seg = seg
        # synthetic label id -> contiguous class index; other ids are not boxes of this view
        self._lut = np.full(256, -1, dtype=np.int64)
        for cid, idx in self.index_of.items():
            self._lut[cid] = idx

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        items = self.seg.boxes(index)
        if not items:
            return _empty_targets()
        boxes = np.asarray([b["bbox"] for b in items], dtype=np.float32).reshape(-1, 4)
        classes = self._lut[np.asarray([b["class"] for b in items], dtype=np.int64)]
        keep = classes >= 0
        return boxes[keep], classes[keep]


def build_synthetic_det(card: DatasetCard, root: str | Path | None = None, split: str = "val",
                        transform: Callable | None = None, **kw: Any) -> SyntheticDetection:
    """Open the synthetic scenes as a detection dataset (options as for ``synthetic``)."""
    from zoo.data.cards import load_card
    from zoo.data.synthetic import build_synthetic

    seg = build_synthetic(load_card(str(card.extra.get("source", "synthetic"))), root, split,
                          None, **kw)
    return SyntheticDetection(card, seg, transform=transform)
