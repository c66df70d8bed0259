"""Shared pieces of the file-based segmentation datasets.

Each loader only has to find its (image, label) pairs and say how raw label values map to
train ids; reading, validation and the ``transform`` hook live here so every dataset fails the
same way on the same problems.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from zoo.data.cards import DatasetCard
from zoo.data.errors import DataError


@dataclass
class Sample:
    """One labelled image: ``image`` HxWx3 uint8 RGB, ``label`` HxW uint8 train ids or 255."""

    image: np.ndarray
    label: np.ndarray
    name: str


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image '{path}' disappeared since the dataset was listed") from None
    except OSError as e:
        raise DataError(f"cannot read image '{path}': {e}; re-download or remove it") from None


def read_index_png(path: Path, *, what: str) -> np.ndarray:
    """An 8-bit single-channel class-index PNG as a uint8 array (palette PNGs give indices)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(
                    f"label '{path}' is a {im.mode} image; {what} labels must be 8-bit "
                    "single-channel class-index PNGs, not colour-coded masks"
                )
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"label '{path}' disappeared since the dataset was listed") from None
    except OSError as e:
        raise DataError(f"cannot read label '{path}': {e}; re-download or remove it") from None


class SegmentationFiles(torch.utils.data.Dataset):
    """(image, label) file pairs plus a 256-entry lookup table from raw label values to train ids.

    ``valid_raw`` marks raw values that may legally appear; anything else means the user pointed
    us at the wrong files (e.g. colour masks, or labelTrainIds instead of labelIds), which is far
    better reported at load time than discovered as a nonsense mIoU. The check is one ``max`` in
    the common case.
    """

    def __init__(
        self,
        card: DatasetCard,
        files: Sequence[tuple[Path, Path]],
        *,
        lut: np.ndarray,
        valid_raw: np.ndarray,
        what: str,
        transform: Callable[[Sample], Any] | None = None,
        root: Path | None = None,
        split: str = "",
    ) -> None:
        self.card = card
        self.files = [(Path(i), Path(l)) for i, l in files]
        self.transform = transform
        self.root = root
        self.split = split
        self._lut = np.asarray(lut, dtype=np.uint8)
        self._valid = np.asarray(valid_raw, dtype=bool)
        # Largest value up to which every raw value is valid: lets the check be a single max().
        invalid = np.flatnonzero(~self._valid)
        self._max_ok = int(invalid[0]) - 1 if len(invalid) else 255
        self._what = what

    def __len__(self) -> int:
        return len(self.files)

    def name_of(self, index: int) -> str:
        return self.files[index][0].stem

    def load(self, index: int) -> Sample:
        """The untransformed sample (what ``__getitem__`` returns without a transform)."""
        img_path, lab_path = self.files[index]
        image = read_rgb(img_path)
        raw = read_index_png(lab_path, what=self._what)
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"{self._what} image and label sizes differ for '{img_path.name}': image "
                f"{image.shape[1]}x{image.shape[0]} vs label {raw.shape[1]}x{raw.shape[0]} "
                f"('{lab_path}'); re-export the pair at the same size"
            )
        if raw.size and int(raw.max()) > self._max_ok:
            values = np.unique(raw)
            bad = values[~self._valid[values]]
            if len(bad):
                raise DataError(
                    f"label '{lab_path}' has value {int(bad[0])} not allowed for {self._what} "
                    f"(allowed raw values: {_ranges(np.flatnonzero(self._valid))}); "
                    "is it a class-index PNG of this dataset?"
                )
        return Sample(image=image, label=self._lut[raw], name=img_path.stem)

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.card.name!r}, split={self.split!r}, "
                f"root='{self.root}', n={len(self)})")


def _ranges(values: np.ndarray) -> str:
    """Compact '0..33, 255' style listing of allowed values."""
    parts: list[str] = []
    start = prev = None
    for v in (int(x) for x in values):
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}..{prev}" if prev != start else str(start))
            start = prev = v
    if start is not None:
        parts.append(f"{start}..{prev}" if prev != start else str(start))
    return ", ".join(parts)


def resolve_splits(split: str, available: Sequence[str], known: Sequence[str], *,
                   what: str, root: Path, layout: str) -> list[str]:
    """``split`` may join splits with '+' (e.g. "train+val", the usual CamVid training set)."""
    parts = [p.strip() for p in split.split("+") if p.strip()]
    if not parts:
        raise DataError(f"empty split name for {what}; use one of: {', '.join(known)}")
    for p in parts:
        if p not in known:
            raise DataError(
                f"unknown {what} split {p!r}; valid splits: {', '.join(known)} "
                "(join with '+', e.g. train+val)"
            )
        if p not in available:
            have = ", ".join(available) if available else "none"
            raise DataError(
                f"{what} split {p!r} not found under '{root}': expected {layout.format(s=p)}; "
                f"available splits there: {have}"
            )
    return parts
