"""Dataset cards: the YAML files in ``datasets/`` that describe each dataset.

A card is the single source of truth for what a model trained on a dataset must agree on: the
class list and order, the ignore index, the colour palette, the train-split mean/std used for
normalisation and the default input size. Keeping it in YAML (not Python) lets a user add a
dataset, or read what a benchmark assumed, without reading code.

The cards live next to the package (``<repo>/datasets``); ``EDGEZOO_DATASETS_DIR`` points elsewhere,
e.g. for an installed package or for tests.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from zoo.data.errors import DataError

ENV_DATASETS_DIR = "EDGEZOO_DATASETS_DIR"

_REQUIRED = (
    "name", "task", "classes", "num_classes", "ignore_index", "palette", "mean", "std",
    "input_size", "default_root", "splits",
)
_OPTIONAL = ("thing_classes",)
TASKS = ("segmentation", "detection")
# Detection cards need no ignore index, palette or statistics: boxes have no void pixels, a
# palette is only for drawing, and detectors are usually fed RGB/255 (YOLO convention). Missing
# ones get the defaults below; the schema (DatasetCard) stays the same for both tasks.
_REQUIRED_DETECTION = ("name", "task", "classes", "num_classes", "input_size", "default_root",
                       "splits")
_DETECTION_DEFAULTS = {"ignore_index": 255, "mean": [0.0, 0.0, 0.0],
                       "std": [255.0, 255.0, 255.0]}


@dataclass(frozen=True)
class DatasetCard:
    """What every consumer of a dataset has to agree on (see ``datasets/README.md``).

    ``classes`` are the *evaluated* classes, in label-index order; loaders remap everything else
    (void, unlabelled, ignored Cityscapes ids) to ``ignore_index``. ``mean``/``std`` are RGB on the
    0-255 scale, measured on the train split. ``input_size`` is (H, W). ``extra`` keeps any further
    card keys (description, source, generator settings) without widening the schema.
    """

    name: str
    task: str
    classes: tuple[str, ...]
    num_classes: int
    ignore_index: int
    palette: tuple[tuple[int, int, int], ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    default_root: str
    splits: tuple[str, ...]
    thing_classes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def class_index(self, name: str) -> int:
        """Index of a class by name (case-insensitive), so code need not hard-code label ids."""
        lowered = [c.lower() for c in self.classes]
        try:
            return lowered.index(name.lower())
        except ValueError:
            raise DataError(
                f"dataset {self.name!r} has no class {name!r}; classes: {', '.join(self.classes)}"
            ) from None

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(self.class_index(c) for c in self.thing_classes)


def datasets_dir() -> Path:
    """Folder holding the ``<name>.yaml`` cards (``EDGEZOO_DATASETS_DIR`` overrides)."""
    env = os.environ.get(ENV_DATASETS_DIR)
    if env:
        return Path(env).expanduser()
    # zoo/data/cards.py -> repo root; equals Path(zoo.__file__).parents[1].
    return Path(__file__).resolve().parents[2] / "datasets"


def list_datasets() -> list[str]:
    """Names of all datasets with a card, sorted."""
    d = datasets_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_card(name: str) -> DatasetCard:
    """Read and validate ``datasets/<name>.yaml``; an unknown name lists the valid ones."""
    key = name.strip().lower()
    path = datasets_dir() / f"{key}.yaml"
    if not path.is_file():
        valid = list_datasets()
        if not valid:
            raise DataError(
                f"unknown dataset {name!r}: no dataset cards found in '{datasets_dir()}'; "
                f"set {ENV_DATASETS_DIR} to the folder holding <name>.yaml cards"
            )
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; valid datasets: {', '.join(valid)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        msg = str(e).replace("\n", " ")
        raise DataError(f"dataset card '{path}' is not valid YAML: {msg}") from None
    card = card_from_dict(raw, source=str(path))
    if card.name != key:
        raise DataError(f"dataset card '{path}' declares name {card.name!r}; it must match the "
                        f"file name {key!r}")
    return card


def card_from_dict(raw: Any, *, source: str = "<dict>") -> DatasetCard:
    """Build a card from parsed YAML, with one-line errors naming the card file and the key."""
    if not isinstance(raw, dict):
        raise DataError(f"dataset card '{source}' must be a YAML mapping")
    if "task" in raw and raw["task"] not in TASKS:
        raise DataError(f"dataset card '{source}': task must be one of {', '.join(TASKS)} "
                        f"(got {raw['task']!r})")
    if raw.get("task") == "detection":
        missing = [k for k in _REQUIRED_DETECTION if k not in raw]
        if missing:
            raise DataError(f"dataset card '{source}' lacks key(s): {', '.join(missing)}")
        raw = {**_DETECTION_DEFAULTS, **raw}
        if "palette" not in raw:
            raw["palette"] = default_palette(len(raw["classes"] or ()))
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise DataError(f"dataset card '{source}' lacks key(s): {', '.join(missing)}")

    def bad(key: str, why: str) -> DataError:
        return DataError(f"dataset card '{source}': {key} {why} (got {raw.get(key)!r})")

    try:
        classes = tuple(str(c) for c in raw["classes"])
        num_classes = int(raw["num_classes"])
        palette = tuple(tuple(int(v) for v in c) for c in raw["palette"])
        mean = tuple(float(v) for v in raw["mean"])
        std = tuple(float(v) for v in raw["std"])
        input_size = tuple(int(v) for v in raw["input_size"])
        splits = tuple(str(s) for s in raw["splits"])
        things = tuple(str(c) for c in (raw.get("thing_classes") or ()))
        ignore_index = int(raw["ignore_index"])
    except (TypeError, ValueError) as e:
        raise DataError(f"dataset card '{source}' has a malformed value: {e}") from None
    if len(classes) != num_classes:
        raise bad("classes", f"must list num_classes={num_classes} names")
    if len(palette) != num_classes or any(len(c) != 3 for c in palette):
        raise bad("palette", f"must hold {num_classes} [r, g, b] triples")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise bad("mean/std", "must be 3 RGB values (std > 0) on the 0-255 scale")
    if len(input_size) != 2 or min(input_size) <= 0:
        raise bad("input_size", "must be [height, width]")
    if not 0 <= ignore_index <= 255 or ignore_index < num_classes:
        raise bad("ignore_index", "must be in num_classes..255")
    unknown_things = [c for c in things if c not in classes]
    if unknown_things:
        raise bad("thing_classes", f"names classes not in the class list: {unknown_things}")
    extra = {k: v for k, v in raw.items() if k not in _REQUIRED and k not in _OPTIONAL}
    if raw["task"] == "detection":
        _check_category_ids(extra, num_classes, source)
    return DatasetCard(
        name=str(raw["name"]), task=str(raw["task"]), classes=classes, num_classes=num_classes,
        ignore_index=ignore_index, palette=palette, mean=mean, std=std,  # type: ignore[arg-type]
        input_size=input_size, default_root=str(raw["default_root"]),  # type: ignore[arg-type]
        splits=splits, thing_classes=things, extra=extra,
    )


def default_palette(n: int) -> list[list[int]]:
    """Distinct, deterministic colours for cards that do not list a palette (detection)."""
    import colorsys

    # Golden-ratio hue steps keep neighbouring class indices far apart in colour.
    return [[int(round(255 * v)) for v in colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0,
                                                              0.75, 0.95)] for i in range(n)]


def _check_category_ids(extra: dict[str, Any], num_classes: int, source: str) -> None:
    """``category_ids``: the annotation-file id of each contiguous class index (COCO: 1..90)."""
    ids = extra.get("category_ids")
    if ids is None:
        return
    try:
        ids = [int(v) for v in ids]
    except (TypeError, ValueError):
        raise DataError(f"dataset card '{source}': category_ids must be integers "
                        f"(got {extra['category_ids']!r})") from None
    if len(ids) != num_classes or len(set(ids)) != len(ids):
        raise DataError(f"dataset card '{source}': category_ids must list {num_classes} distinct "
                        f"ids, one per class (got {len(ids)}, {len(set(ids))} distinct)")
    extra["category_ids"] = ids
