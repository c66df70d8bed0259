"""Calibration data for static post-training quantization.

A calibration set is a fixed, seeded subset of a dataset's *training* images (never the split
that accuracy is reported on), resized to the network's input size and pre-processed exactly as
at benchmark time. It is identified by a sha256 over everything that determines it (dataset,
split, image names, pre-processing, input size, seed and the array bytes), which goes into the
quantized artifact's metadata so that two INT8 artifacts can be told apart by their calibration.

``CalibrationReader`` adapts it to ONNX Runtime's ``CalibrationDataReader``; ``calibration_method``
maps our method names onto ``onnxruntime.quantization.CalibrationMethod``, and
``resolve_calib_method`` picks a task's default method (per runtime) when none is named.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from PIL import Image

from zoo.errors import UsageError

from zoo.data import DataError, Preprocess, build_dataset

# Our names -> onnxruntime.quantization.CalibrationMethod member names.
METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
MIN_IMAGES = 16
# The "percentile" method on both backends: the range is cut at this percentile of |x| over all
# calibration activations, read from a histogram of this many bins over 0..max|x|. These are
# ONNX Runtime's own defaults for CalibrationMethod.Percentile (its calibrator histograms |x|
# unless CalibTensorRangeSymmetric says otherwise); `quant.ptq_static` passes the percentile to
# ORT explicitly and `quant.fx_quant.PercentileObserver` uses both, so the two backends agree.
PERCENTILE = 99.999
PERCENTILE_BINS = 2048
# The calibration method a (task, runtime) gets when none is named (--calib-method unset). The
# runtime is the calibrator behind the artifact: "onnx" is ONNX Runtime's (ORT and TensorRT QDQ
# artifacts, quant.sensitivity), "torch" the FX observers (PyTorch static INT8). Measured (NOTES.md):
# on yolov5n / coco-tiny at 640, ORT static INT8 kept 97.6 % of FP32 mAP50-95 with percentile
# against 94.6 % (entropy) and 92.9 % (minmax) (session 4), while FX static INT8 kept 93.7 % with
# entropy against 87.6 % (percentile) and 84.4 % (minmax) (session 5). Segmentation on CamVid val
# (session 14, ORT static, all layers INT8): ESPNet kept 98.2 % of FP32 mIoU with percentile
# against 94.3 % (entropy) and 88.2 % (minmax); DDRNet-23-slim 100.0 % (percentile) and 99.98 %
# (entropy). PyTorch FX segmentation keeps entropy (torch's L2 HistogramObserver: 99.57 % on
# ESPNet, 99.67 % on DDRNet). Tasks not listed (instance networks) keep entropy.
RUNTIMES = ("onnx", "torch")
TASK_CALIB_METHODS = {
    ("detection", "onnx"): "percentile",
    ("detection", "torch"): "entropy",
    ("segmentation", "onnx"): "percentile",
    ("segmentation", "torch"): "entropy",
}
FALLBACK_CALIB_METHOD = "entropy"


class QuantError(UsageError):
    """A quantization input or setting that cannot work, explained in one line with the fix."""


@dataclass
class CalibrationData:
    """Pre-processed calibration inputs: ``arrays`` are float32 NCHW batches of one image."""

    arrays: list[np.ndarray]
    names: list[str]
    sha256: str
    dataset: str
    split: str
    seed: int
    input_hw: tuple[int, int]
    preprocess: dict[str, Any] = field(default_factory=dict)
    requested: int = 0

    @property
    def size(self) -> int:
        return len(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.arrays)

    def as_dict(self) -> dict[str, Any]:
        """What an artifact records about its calibration (small; no arrays, no names)."""
        return {"sha256": self.sha256, "size": self.size, "requested": self.requested,
                "dataset": self.dataset, "split": self.split, "seed": self.seed,
                "input_hw": list(self.input_hw)}


def calibration_method(name: str) -> CalibrationMethod:
    """``"minmax" | "percentile" | "entropy"`` -> ``onnxruntime.quantization.CalibrationMethod``."""
    key = str(name).lower()
    if key not in METHODS:
        raise QuantError(f"unknown calibration method {name!r}; valid methods: {', '.join(METHODS)}")
    return getattr(CalibrationMethod, METHODS[key])


def resolve_calib_method(method: str | None, task: str, runtime: str = "onnx") -> str:
    """The calibration method to use: `method` when named, else the default of `task` calibrated
    by `runtime` ("onnx" or "torch", see `TASK_CALIB_METHODS`)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown calibration runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if method is None:
        return TASK_CALIB_METHODS.get((task, runtime), FALLBACK_CALIB_METHOD)
    key = str(method).lower()
    if key not in METHODS:
        raise QuantError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}")
    return key


def _hash(dataset: str, split: str, names: list[str], preprocess: dict[str, Any],
          input_hw: tuple[int, int], seed: int, arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    header = {"dataset": dataset, "split": split, "names": names, "preprocess": preprocess,
              "input_hw": list(input_hw), "seed": seed}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return digest.hexdigest()


def seeded_subset(order: list[int], wanted: int, seed: int) -> list[int]:
    """`wanted` items of `order` (dataset indices sorted by file name), drawn without replacement
    with ``numpy.random.default_rng(seed)`` and kept in `order`'s order; all of them if there are
    no more than `wanted`. Every calibration set (segmentation, detection, QAT) selects this way."""
    if len(order) <= wanted:
        return list(order)
    picks = np.random.default_rng(seed).choice(len(order), size=wanted, replace=False)
    return [order[i] for i in sorted(int(p) for p in picks)]


def build_calibration(
    dataset: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    num_images: int = 256,
    seed: int = 0,
    preprocess: Preprocess,
    input_hw: tuple[int, int],
    strict: bool = False,
    min_images: int = MIN_IMAGES,
    dataset_kwargs: dict[str, Any] | None = None,
) -> CalibrationData:
    """A seeded subset of ``num_images`` images of ``split``, as float32 NCHW batches of one.

    The split's files are sorted by name, then ``num_images`` indices are drawn without
    replacement with ``numpy.random.default_rng(seed)``, so the subset depends only on the file
    names and the seed. Images are resized to ``input_hw`` (bilinear) and normalised with
    ``preprocess``. With fewer images than requested: ``strict`` raises; otherwise all of them
    are used (with a warning) as long as there are at least ``min_images``.
    ``dataset_kwargs`` go to ``zoo.data.build_dataset`` (e.g. synthetic ``num_images``/``size``).
    """
    if num_images < 1:
        raise QuantError(f"num_images must be >= 1, got {num_images}")
    h, w = int(input_hw[0]), int(input_hw[1])
    try:
        ds = build_dataset(dataset, root=root, split=split, **(dataset_kwargs or {}))
    except DataError as exc:
        fix = "" if ";" in str(exc) else (f"; calibration needs images of the {split!r} split: point "
                                          "root at a dataset that has them")
        raise QuantError(f"cannot open the calibration split: {exc}{fix}") from None
    order = sorted(range(len(ds.files)), key=lambda i: str(ds.files[i][0]))
    available = len(order)
    if available == 0:
        raise QuantError(f"calibration split {split!r} of {dataset} has no images "
                         f"(root {getattr(ds, 'root', root)}); point the data root at a dataset "
                         "with training images or pick another split")
    if available < num_images:
        if strict:
            raise QuantError(f"calibration split {split!r} of {dataset} has {available} images, "
                             f"{num_images} requested; lower num_images or pass strict=False")
        if available < min_images:
            raise QuantError(f"calibration split {split!r} of {dataset} has only {available} images, "
                             f"fewer than the minimum {min_images}; add training images or lower "
                             "min_images")
        warnings.warn(f"calibration: {dataset}/{split} has {available} images, {num_images} "
                      f"requested; using all {available}", stacklevel=2)
        chosen = list(order)
    else:
        chosen = seeded_subset(order, num_images, seed)
    arrays: list[np.ndarray] = []
    names: list[str] = []
    for index in chosen:
        sample = ds.load(index)
        image = sample.image
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        arrays.append(preprocess.batch_numpy([image]))
        names.append(sample.name)
    pre = preprocess.to_dict()
    digest = _hash(dataset, split, names, pre, (h, w), int(seed), arrays)
    return CalibrationData(arrays=arrays, names=names, sha256=digest, dataset=dataset, split=split,
                           seed=int(seed), input_hw=(h, w), preprocess=pre, requested=int(num_images))


class CalibrationReader(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over a `CalibrationData`.

    Supports ``set_range`` and ``len`` so ORT can collect statistics a few images at a time
    (``CalibStridedMinMax``), which bounds the memory the histogram calibrators need.
    """

    def __init__(self, calib: CalibrationData, input_name: str = "input") -> None:
        self.calib = calib
        self.input_name = input_name
        self.start, self.end = 0, len(calib.arrays)
        self._pos = self.start

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self.end:
            return None
        batch = self.calib.arrays[self._pos]
        self._pos += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._pos = self.start

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = int(start_index), min(int(end_index), len(self.calib.arrays))
        self._pos = self.start

    def __len__(self) -> int:
        return len(self.calib.arrays)
