"""Per-class loss weights for imbalanced data (issue #8).

Weighting schemes (all return float64 numpy arrays normalised to sum to the number of classes,
so that switching scheme does not change the overall loss scale)::

    effective_number(counts, beta)  Cui et al. 2019: w_c ∝ (1 - beta) / (1 - beta**n_c)
    inverse_freq(counts)            w_c ∝ 1 / n_c
    median_freq(counts, totals)     Eigen & Fergus / SegNet: w_c ∝ median(f) / f_c,
                                    f_c = n_c / (pixels of the images that contain c)
    enet_log(counts, c=1.02)        ENet: w_c ∝ 1 / ln(1.02 + p_c), p_c = n_c / sum(n)

A method is named by one of `METHODS`; ``enet:C`` picks ENet's constant (ESPNet's and ERFNet's
training code use ``enet:1.10``, which bounds the largest weight at 1/ln(1.10) = 10.5 instead of
ENet's 50.5).

What a "count" is (``source``): ``pixels`` (labelled pixels of the class), ``images`` (images
that contain the class) or ``instances`` (objects of the class: instance maps where the dataset
has them; 8-connected components of the class mask for stuff classes and datasets without them).

Absent classes (count 0) would get an infinite weight; they get the weight of the rarest present
class instead (they never appear as a target of that split, so the value only matters for the
normalisation and for monotonicity: a rarer class never gets a smaller weight).

Choosing beta (`default_beta`)
------------------------------
E_n = (1 - beta**n) / (1 - beta) saturates at 1 / (1 - beta) once n >> 1 / (1 - beta). With pixel
counts (1e5..1e7) and the paper's beta <= 0.9999 every class is saturated and all weights are ~1:
class balancing silently does nothing. beta must be on the scale of the counts. The rule here is

    beta = 1 - 1 / N_ref,   N_ref = the largest class count (default; "max")

so beta**n_c = (1 - 1/N_ref)**n_c ~ exp(-n_c / N_ref) >= exp(-1) for every class: no class is
saturated, the tail classes (n_c << N_ref) get weights proportional to 1 / n_c (the inverse-frequency
end of the CB family), and the head classes are compressed towards each other (the "diminishing
returns" the paper argues for). The weights depend only on the ratios of the counts, so the same
rule works for pixel, image and instance counts and for datasets of any size. ``reference`` may
also be "median" (classes above the median count saturate together: milder re-weighting), "sum"
or an explicit number N_ref.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

METHODS = ("none", "effective", "inverse", "median", "enet")
SOURCES = ("pixels", "images", "instances")
COUNTS_VERSION = 1


# --------------------------------------------------------------------------------------------
# weighting schemes
# --------------------------------------------------------------------------------------------

def _as_counts(counts: Any) -> np.ndarray:
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    n = np.asarray(counts, dtype=np.float64).reshape(-1)
    if n.size == 0:
        raise ValueError("class counts are empty")
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"class counts must be finite and >= 0, got {n.tolist()}")
    if not np.any(n > 0):
        raise ValueError("every class count is 0: no labelled pixels/images/instances were found")
    return n


def _finish(raw: np.ndarray, n: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Give absent classes the rarest present class's weight, then scale to sum to C."""
    w = np.array(raw, dtype=np.float64)
    present = n > 0
    if not present.all():
        w[~present] = w[present].max()
    if normalize:
        w = w / w.sum() * len(w)
    return w


def default_beta(counts: Any, reference: str | float = "max") -> float:
    """beta = 1 - 1/N_ref on the scale of the counts (see the module docstring for why).

    ``reference``: "max" (largest class count, default), "median" (median of the present
    counts), "sum" (all counts together) or a number used directly as N_ref.
    """
    n = _as_counts(counts)
    present = n[n > 0]
    if isinstance(reference, str):
        if reference == "max":
            n_ref = present.max()
        elif reference == "median":
            n_ref = float(np.median(present))
        elif reference == "sum":
            n_ref = present.sum()
        else:
            raise ValueError(f"unknown beta reference {reference!r}; valid: max, median, sum, or a number")
    else:
        n_ref = float(reference)
    if n_ref <= 1:
        return 0.0  # one sample per class at most: nothing to re-weight
    return float(1.0 - 1.0 / n_ref)


def effective_number(counts: Any, beta: float | None = None, *, normalize: bool = True) -> np.ndarray:
    """Class-balanced weights (1 - beta) / (1 - beta**n), normalised to sum to C.

    beta = 0 gives all ones; beta -> 1 tends to normalised inverse frequency. ``beta=None`` uses
    `default_beta`. Computed as -expm1(n * log(beta)) so beta close to 1 keeps its precision.
    """
    n = _as_counts(counts)
    if beta is None:
        beta = default_beta(n)
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if beta == 0.0:
        raw = np.ones_like(n)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            # 1 - beta**n, and (1 - beta) computed the same way for consistency
            eff = -np.expm1(n * np.log(beta))
            raw = -np.expm1(np.log(beta)) / eff
        raw[n <= 0] = 0.0  # replaced by _finish
    return _finish(raw, n, normalize)


def inverse_freq(counts: Any, *, normalize: bool = True) -> np.ndarray:
    """w_c ∝ 1 / n_c, normalised to sum to C."""
    n = _as_counts(counts)
    raw = np.zeros_like(n)
    raw[n > 0] = 1.0 / n[n > 0]
    return _finish(raw, n, normalize)


def median_freq(counts: Any, totals: Any = None, *, normalize: bool = True) -> np.ndarray:
    """Median-frequency balancing: w_c = median(f) / f_c with f_c = counts_c / totals_c.

    For pixel counts ``totals`` is, per class, the number of labelled pixels of the images that
    contain the class (SegNet's definition); without ``totals`` f_c = n_c / sum(n).
    """
    n = _as_counts(counts)
    if totals is None:
        t = np.full_like(n, n.sum())
    else:
        t = np.asarray(totals.detach().cpu().numpy() if isinstance(totals, torch.Tensor) else totals,
                       dtype=np.float64).reshape(-1)
        if t.shape != n.shape:
            raise ValueError(f"totals has {t.size} entries for {n.size} classes")
    present = (n > 0) & (t > 0)
    freq = np.zeros_like(n)
    freq[present] = n[present] / t[present]
    raw = np.zeros_like(n)
    raw[present] = np.median(freq[present]) / freq[present]
    return _finish(raw, np.where(present, n, 0.0), normalize)


def enet_log(counts: Any, c: float = 1.02, *, normalize: bool = True) -> np.ndarray:
    """ENet's w_c = 1 / ln(c + p_c) with p_c = n_c / sum(n) (bounded: 1/ln(1+c) .. 1/ln(c))."""
    n = _as_counts(counts)
    if c <= 1.0:
        raise ValueError(f"ENet's constant must be > 1 (1/ln(c) is the largest weight), got {c}")
    raw = 1.0 / np.log(c + n / n.sum())
    raw[n <= 0] = 0.0
    return _finish(raw, n, normalize)


def parse_method(spec: str) -> tuple[str, dict[str, float]]:
    """``"enet:1.10"`` -> ``("enet", {"c": 1.1})``; a plain name -> ``(name, {})``."""
    method, _, param = spec.partition(":")
    if method not in METHODS:
        raise ValueError(f"unknown class-weight method {spec!r}; valid: {', '.join(METHODS)} (and enet:C)")
    if not param:
        return method, {}
    if method != "enet":
        raise ValueError(f"class-weight method {method!r} takes no parameter (only enet:C, ENet's constant)")
    try:
        return method, {"c": float(param)}
    except ValueError:
        raise ValueError(f"class-weight method {spec!r}: the constant after 'enet:' must be a number") from None


def compute_weights(method: str, counts: Any, *, beta: float | None = None,
                    totals: Any = None) -> np.ndarray:
    """Dispatch on ``method`` (one of `METHODS`, or ``enet:C``)."""
    method, params = parse_method(method)
    if method == "none":
        return np.ones(_as_counts(counts).size)
    if method == "effective":
        return effective_number(counts, beta)
    if method == "inverse":
        return inverse_freq(counts)
    if method == "median":
        return median_freq(counts, totals)
    if method == "enet":
        return enet_log(counts, **params)
    raise ValueError(f"unknown class-weight method {method!r}; valid: {', '.join(METHODS)}")


def bce_class_weights(counts_boxes_per_class: Any, beta: float | None = None) -> torch.Tensor:
    """Per-class weights for a detector's BCE class term (e.g. YOLOv5's ``BCEcls``).

    Counts are ground-truth boxes per class; returns a float32 [C] tensor summing to C (CB
    effective-number weights, ``beta=None`` -> `default_beta` of the box counts). Multiply the
    [..., C] element-wise BCE by it before the reduction.
    """
    return torch.as_tensor(effective_number(counts_boxes_per_class, beta), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# counting over a dataset split (cached)
# --------------------------------------------------------------------------------------------

def _label_of(ds: Any, index: int) -> np.ndarray:
    """The train-id label map, without decoding the image where the dataset allows it."""
    lut = getattr(ds, "_lut", None)
    files = getattr(ds, "files", None)
    if lut is not None and files is not None:
        from zoo.data.base import read_index_png
        raw = read_index_png(files[index][1], what=getattr(ds, "_what", "dataset"))
        return lut[raw]
    return np.asarray(ds.load(index).label if hasattr(ds, "load") else ds[index].label)


def _instance_counts(label: np.ndarray, inst: np.ndarray | None, valid: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Objects per class in one image: instance ids (each id counted for its majority label);
    classes without instance pixels in the image (stuff, or no instance map) count their
    8-connected components instead."""
    out = np.zeros(num_classes, dtype=np.int64)
    stuff = np.unique(label[valid])  # classes counted as connected components
    if inst is not None:
        sel = valid & (inst > 0)
        # classes with no instance pixels here (stuff: sky, road...) fall back to components
        stuff = np.setdiff1d(stuff, np.unique(label[sel]))
    if inst is not None and sel.any():
        ids = inst[sel].astype(np.int64)
        labs = label[sel].astype(np.int64)
        pairs, freq = np.unique(ids * 256 + labs, return_counts=True)
        pid, plab = pairs // 256, pairs % 256
        order = np.lexsort((-freq, pid))  # per id, most frequent label first
        first = np.ones(order.size, dtype=bool)
        first[1:] = pid[order][1:] != pid[order][:-1]
        np.add.at(out, plab[order][first], 1)
    if not stuff.size:
        return out
    from scipy import ndimage
    structure = np.ones((3, 3), dtype=bool)
    for c in stuff:
        _, k = ndimage.label(label == c, structure=structure)
        out[int(c)] += k
    return out


def count_classes(ds: Any, num_classes: int, *, ignore_index: int = 255,
                  sources: Iterable[str] = ("pixels", "images"), progress: bool = True,
                  ) -> dict[str, list[int]]:
    """One pass over ``ds``: {"pixels", "images", "image_pixels"[, "instances"]} per class.

    ``image_pixels[c]`` is the number of labelled pixels of the images that contain c (the
    denominator of median-frequency balancing). Label values >= num_classes other than
    ``ignore_index`` are an error (wrong ``num_classes`` or unmapped labels).
    """
    from tqdm import tqdm

    want_inst = "instances" in set(sources)
    pixels = np.zeros(num_classes, dtype=np.int64)
    images = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    instances = np.zeros(num_classes, dtype=np.int64)
    has_inst = hasattr(ds, "load_instances")
    for i in tqdm(range(len(ds)), desc="counting classes", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True):
        label = _label_of(ds, i)
        valid = label != ignore_index
        hist = np.bincount(label[valid].reshape(-1), minlength=num_classes)
        if hist.size > num_classes:
            bad = int(np.flatnonzero(hist[num_classes:])[0]) + num_classes
            raise ValueError(f"label value {bad} in image {i} is >= num_classes={num_classes} "
                             f"and is not the ignore index {ignore_index}")
        present = hist > 0
        pixels += hist
        images += present
        image_pixels[present] += int(valid.sum())
        if want_inst:
            inst = np.asarray(ds.load_instances(i)) if has_inst else None
            instances += _instance_counts(label, inst, valid, num_classes)
    out = {"pixels": pixels.tolist(), "images": images.tolist(), "image_pixels": image_pixels.tolist()}
    if want_inst:
        out["instances"] = instances.tolist()
        out["instances_from"] = "instance maps" if has_inst else "connected components"
    return out


def files_hash(ds: Any, *, num_classes: int, ignore_index: int) -> str:
    """sha256 of the label file list (paths, sizes, mtimes) plus what the counts depend on."""
    h = hashlib.sha256()
    h.update(f"v{COUNTS_VERSION};C={num_classes};ignore={ignore_index};n={len(ds)}\n".encode())
    for pair in getattr(ds, "files", []):
        for p in pair:
            p = Path(p)
            try:
                st = p.stat()
                h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$EDGEZOO_CACHE/class_counts`` (default ``~/.cache/edgezoo/class_counts``)."""
    return Path(os.environ.get("EDGEZOO_CACHE") or "~/.cache/edgezoo").expanduser() / "class_counts"


def cached_counts(ds: Any, dataset_name: str, split: str, *, num_classes: int, ignore_index: int = 255,
                  source: str = "pixels", cache_dir: str | Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """`count_classes` with a JSON cache keyed by `files_hash` (recounted when files change)."""
    if source not in SOURCES:
        raise ValueError(f"unknown count source {source!r}; valid: {', '.join(SOURCES)}")
    key = files_hash(ds, num_classes=num_classes, ignore_index=ignore_index)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    safe_split = "".join(ch if ch.isalnum() or ch in "-_+" else "_" for ch in split)
    path = folder / f"{dataset_name}-{safe_split}-{key[:16]}.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") != key:
                data = {}
        except (OSError, ValueError):
            data = {}
    if source not in data:
        sources = ["pixels", "images"] + (["instances"] if source == "instances" else [])
        counts = count_classes(ds, num_classes, ignore_index=ignore_index, sources=sources,
                               progress=progress)
        data.update(counts)
        data.update(key=key, dataset=dataset_name, split=split, num_classes=num_classes,
                    ignore_index=ignore_index, num_images=len(ds))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, path)
        except OSError as e:  # a read-only cache must not stop training
            print(f"[class_weights] could not cache counts in '{path}': {e}", file=sys.stderr)
    data["cache_path"] = str(path)
    return data


def class_weights_for(dataset_name: str, *, root: str | Path | None, split: str = "train",
                      method: str, beta: float | None = None, source: str = "pixels",
                      num_classes: int, ignore_index: int = 255,
                      cache_dir: str | Path | None = None, progress: bool = True,
                      ) -> torch.Tensor | None:
    """Class weights for ``method`` over one dataset split, as a float32 [num_classes] tensor.

    Returns None for ``method="none"`` (no weighting). Counts are computed once per split (with a
    progress bar) and cached as JSON keyed by the hash of the file list. ``beta`` only matters
    for "effective" (None -> `default_beta` of the counts).
    """
    parse_method(method)  # validates before any counting
    if source not in SOURCES:
        raise ValueError(f"unknown count source {source!r}; valid: {', '.join(SOURCES)}")
    if method == "none":
        return None
    from zoo.data import build_dataset

    ds = build_dataset(dataset_name, root=root, split=split)
    data = cached_counts(ds, dataset_name, split, num_classes=num_classes, ignore_index=ignore_index,
                         source=source, cache_dir=cache_dir, progress=progress)
    counts = data[source]
    totals = data["image_pixels"] if (method == "median" and source == "pixels") else None
    w = compute_weights(method, counts, beta=beta, totals=totals)
    return torch.as_tensor(w, dtype=torch.float32)


def describe(weights: Sequence[float] | torch.Tensor, class_names: Sequence[str] | None = None) -> str:
    """One line 'name=w, ...' for logs."""
    w = [float(x) for x in (weights.tolist() if isinstance(weights, torch.Tensor) else weights)]
    names = list(class_names) if class_names else [str(i) for i in range(len(w))]
    return ", ".join(f"{n}={x:.3g}" for n, x in zip(names, w))
