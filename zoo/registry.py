"""Model registry: one `ModelEntry` per network, looked up by name or alias.

Registries fail loudly (torchvision `_api.py` style): a duplicate name raises, an unknown
name lists every valid one.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch.nn as nn

# "instance": bottom-up instance segmentation (zoo.instances); one output tensor holding semantic
# logits, centre heat and offsets, scored by PQ rather than mIoU.
Task = Literal["segmentation", "detection", "instance"]


@dataclass(frozen=True)
class Published:
    """Figures published for a network, for the fidelity tests and the zoo table.

    `params_m` is counted at `num_classes` outputs; `gmacs` at `gmacs_hw` (height, width).
    """

    params_m: float
    num_classes: int
    gmacs: float | None = None
    gmacs_hw: tuple[int, int] | None = None
    miou: float | None = None
    miou_note: str = ""
    map50_95: float | None = None  # detection: COCO mAP50-95 (%), conditions in map_note
    map_note: str = ""
    pq: float | None = None  # instance: panoptic quality (%), conditions in pq_note
    pq_note: str = ""
    source: str = ""
    # Why our counted params / MACs differ from the published ones, when they knowingly do (the
    # fidelity tests then expect the mismatch instead of hiding it, and the zoo table shows it).
    params_deviation: str = ""
    gmacs_deviation: str = ""


@dataclass(frozen=True)
class OfficialWeights:
    """An official checkpoint the family can import (a local file, never downloaded).

    `preprocess` overrides the dataset normalisation when these weights are used, because official
    checkpoints were trained with their authors' own pre-processing.
    """

    description: str
    num_classes: int
    filename: str
    preprocess: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: Task
    family: str
    builder: Callable[..., nn.Module]
    citation: str
    published: Published
    aliases: tuple[str, ...] = ()
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    # Weights of auxiliary training-only heads, in the order the network returns them.
    aux_weights: tuple[float, ...] = ()
    official_weights: tuple[OfficialWeights, ...] = ()
    recipe: str = ""  # training recipe name (zoo.recipes); empty means the family's name
    # Reads the family's official checkpoint format when it is not a tensor state dict (YOLOv5's
    # pickled modules): path -> {"model": state_dict, "meta": {...}}, or None for a file it does
    # not claim, which `zoo.checkpoints.read_checkpoint` then reads.
    checkpoint_reader: Callable[[Path], dict[str, Any] | None] | None = None

    @property
    def default_recipe(self) -> str:
        return self.recipe or self.family

    def build(self, *, num_classes: int, **kwargs: Any) -> nn.Module:
        merged = {**self.default_kwargs, **kwargs}
        return self.builder(num_classes=num_classes, **merged)


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it a readable sentence
        return str(self.args[0])


_ENTRIES: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add an entry; any clash of a name or alias with an existing one raises."""
    for key in (entry.name, *entry.aliases):
        if key in _ENTRIES or key in _ALIASES:
            raise ValueError(f"model name {key!r} is already registered")
    _ENTRIES[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name
    return entry


def _ensure_loaded() -> None:
    # Family modules register themselves on import; import them lazily so `zoo.registry`
    # stays importable from anywhere without cycles.
    from zoo import families  # noqa: F401


def resolve(name: str) -> str:
    _ensure_loaded()
    key = name.lower().replace("-", "_")
    if key in _ENTRIES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    valid = sorted([*_ENTRIES, *_ALIASES])
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint}; valid models: {', '.join(valid)}")


def get_entry(name: str) -> ModelEntry:
    return _ENTRIES[resolve(name)]


def list_models(task: Task | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(n for n, e in _ENTRIES.items() if task is None or e.task == task)


def list_aliases() -> dict[str, str]:
    _ensure_loaded()
    return dict(_ALIASES)


def build(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    return get_entry(name).build(num_classes=num_classes, **kwargs)
