"""Data for instance segmentation: semantic labels for training, true instance ids for evaluation.

`open_data(name, split=..., with_instances=...)` gives an `InstanceData` whose `dataset.load(i)`
returns an `InstanceSample`. Training opens it with ``with_instances=False``: the samples then
carry *no* instance ids (``ids is None``), so nothing in the training path can read them.

* Segmentation cards with ``thing_classes`` (``synthetic``, ``synthetic-lt``): image and semantic
  label from `zoo.data`; instance ids from the synthetic generator's instance maps
  (`SyntheticDataset.load_instances`), the class of an instance being the label under it.
* ``coco`` (a COCO-format json, e.g. ../shared/data/coco-tiny): 81 semantic classes
  (0 background, 1..80 the card's classes in category-id order); instance masks from the
  polygons / RLEs via pycocotools, painted largest first so that a small object lying on a larger
  one keeps its pixels (COCO instances may overlap; a label map cannot). Crowd regions are void
  (255) and are no instance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zoo.data import DataError, Preprocess, build_dataset, default_root, load_card
from zoo.data.base import read_rgb


@dataclass
class InstanceSample:
    image: np.ndarray               # uint8 (H, W, 3) RGB
    semantic: np.ndarray            # uint8 (H, W) class ids, 255 = void
    ids: np.ndarray | None          # int32 (H, W) true instance ids (0 = none); None for training
    classes: np.ndarray | None      # int64 class of each id, index 0 unused
    name: str


class _Loader(Protocol):
    def __len__(self) -> int: ...
    def load(self, index: int) -> InstanceSample: ...


@dataclass
class InstanceData:
    name: str
    split: str
    classes: tuple[str, ...]
    thing_ids: tuple[int, ...]
    ignore_index: int
    preprocess: Preprocess
    dataset: _Loader

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def thing_names(self) -> tuple[str, ...]:
        return tuple(self.classes[c] for c in self.thing_ids)


class _SegmentationView:
    """A segmentation dataset as `InstanceSample`s, with instance ids only when asked for."""

    def __init__(self, ds: Any, with_instances: bool) -> None:
        if with_instances and not hasattr(ds, "load_instances"):
            raise DataError(f"dataset {ds.card.name!r} has no instance labels to evaluate against; "
                            "use synthetic or a COCO-format dataset")
        self.ds = ds
        self.with_instances = with_instances

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, index: int) -> InstanceSample:
        s = self.ds.load(index)
        ids = classes = None
        if self.with_instances:
            ids = self.ds.load_instances(index).astype(np.int32)
            classes = np.full(int(ids.max()) + 1, -1, np.int64)
            on = ids > 0
            classes[ids[on]] = s.label[on]
        return InstanceSample(image=s.image, semantic=s.label, ids=ids, classes=classes, name=s.name)


class CocoInstances:
    """COCO json (images + polygon / RLE masks) as semantic labels and instance maps."""

    def __init__(self, root: Path, split: str, category_ids: tuple[int, ...], with_instances: bool,
                 limit: int | None = None) -> None:
        import contextlib
        import io

        from pycocotools.coco import COCO

        ann = root / "annotations" / f"instances_{split}2017.json"
        self.image_dir = root / f"{split}2017"
        if not ann.is_file() or not self.image_dir.is_dir():
            raise DataError(f"COCO split {split!r} not found under '{root}': expected {ann} and {self.image_dir}/")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann))
        self.index_of = {c: i + 1 for i, c in enumerate(category_ids)}
        self.image_ids = sorted(self.coco.getImgIds())[:limit]
        self.with_instances = with_instances

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int) -> InstanceSample:
        info = self.coco.loadImgs(self.image_ids[index])[0]
        image = read_rgb(self.image_dir / info["file_name"])
        h, w = image.shape[:2]
        semantic = np.zeros((h, w), np.uint8)
        ids = np.zeros((h, w), np.int32)
        classes = [-1]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"]))
        for a in sorted(anns, key=lambda a: -float(a.get("area", 0))):
            if a["category_id"] not in self.index_of:
                continue
            m = self.coco.annToMask(a).astype(bool)
            if m.shape != (h, w):
                raise DataError(f"COCO mask of annotation {a['id']} is {m.shape}, image {(h, w)}")
            if a.get("iscrowd", 0):
                semantic[m] = 255
                ids[m] = 0
                continue
            semantic[m] = self.index_of[a["category_id"]]
            ids[m] = len(classes)
            classes.append(self.index_of[a["category_id"]])
        if not self.with_instances:
            return InstanceSample(image=image, semantic=semantic, ids=None, classes=None, name=str(info["id"]))
        return InstanceSample(image=image, semantic=semantic, ids=ids, classes=np.asarray(classes, np.int64),
                              name=str(info["id"]))


def open_data(name: str, *, root: str | Path | None = None, split: str = "train", with_instances: bool = False,
              num_images: int | None = None, size: tuple[int, int] | None = None,
              progress: bool = False) -> InstanceData:
    """Open a split for instance work. `num_images` limits the images (synthetic: generates that
    many in every split, like ``build_dataset(num_images=...)``); `size` is the synthetic size."""
    card = load_card(name)
    if card.task == "detection":
        if str(card.extra.get("format", "coco")) != "coco":
            raise DataError(f"dataset {name!r}: only COCO-format detection data has instance masks")
        base = Path(root).expanduser() if root is not None else default_root(name)
        ds: _Loader = CocoInstances(base, split, tuple(card.extra.get("category_ids") or range(1, card.num_classes + 1)),
                                    with_instances, limit=num_images)
        classes = ("background", *card.classes)
        return InstanceData(name=name, split=split, classes=classes, thing_ids=tuple(range(1, len(classes))),
                            ignore_index=255, preprocess=Preprocess.from_card(card), dataset=ds)
    if not card.thing_ids:
        raise DataError(f"dataset {name!r} declares no thing_classes, so it has no instances")
    kw: dict[str, Any] = {}
    if card.name == "synthetic" or card.extra.get("source") == "synthetic":
        kw["progress"] = progress
        if num_images is not None:
            kw["num_images"] = num_images
        if size is not None:
            kw["size"] = tuple(size)
    seg = build_dataset(name, root=root, split=split, **kw)
    view = _SegmentationView(seg, with_instances)
    if num_images is not None and "num_images" not in kw:
        view.ds.files = view.ds.files[:num_images]
    return InstanceData(name=name, split=split, classes=tuple(card.classes), thing_ids=tuple(card.thing_ids),
                        ignore_index=card.ignore_index, preprocess=Preprocess.from_card(card), dataset=view)
