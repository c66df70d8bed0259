"""Procedural street scenes with CamVid's 11 classes: the dataset that needs no download.

Why it exists: the zoo's training, quantisation and benchmark pipelines must run end to end on a
machine with no data at all (CI, a fresh Jetson). The scenes therefore use CamVid's label ids
(0..10, void 11) and layout, so recipes and code paths transfer unchanged, and they are built to
be *not* trivially easy, so that model capacity and quantisation error show up in mIoU:

* perspective geometry (jittered vanishing point, camera roll, depth-scaled objects, occlusion
  drawn far to near), thin structures (1-4 px poles, fence bars, signs of a few pixels);
* overlapping class colours (grey cars on grey roads in front of grey buildings, overcast grey
  skies), so texture and context are needed, not a colour lookup;
* textures (asphalt grain, paving tiles, windows in perspective, leafy trees), lane markings that
  are labelled Road, shadows, global lighting and colour casts, blur, sensor noise, JPEG
  artefacts, and void pixels on object borders and unlabelled clutter;
* long-tailed class frequencies similar to CamVid (road/building/sky large, sign/pole/bicyclist
  rare); the manifest records the measured per-class pixel frequencies.

Every image comes from its own RNG, ``default_rng([seed, split_index, image_index])``, so any
image can be regenerated on its own and the result does not depend on generation order.
The dataset is written once, atomically, into a cache directory in the SegNet layout plus
instance maps (``{split}inst/*.png``, 16-bit, 0 = none) and boxes (``{split}_boxes.json``), and is
then read back by the CamVid reader.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from PIL import Image, ImageDraw

from zoo.data.camvid import camvid_lut, segnet_pairs
from zoo.data.base import SegmentationFiles
from zoo.data.cards import DatasetCard
from zoo.data.errors import DataError
from zoo.data.pngio import write_png

# Bump when the pixels of a given (seed, size) change: the cache folder name carries it.
# 2: faster renderer (issue #2): the same scenes, labels, instances and boxes as 1; the images
#    differ by rounding (+0.45 grey level on average) and the sensor-noise draws.
GENERATOR_VERSION = 2
ENV_CACHE = "EDGEZOO_CACHE"
SPLITS = ("train", "val", "test")
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZE = (360, 480)
DEFAULT_COUNTS = {"train": 400, "val": 100, "test": 100}
MANIFEST = "manifest.json"
_CHANNEL_OFFSET = np.array([0, 256, 512], dtype=np.intp)

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST, VOID = range(12)
CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
               "Car", "Pedestrian", "Bicyclist")
THING_IDS = (CAR, PEDESTRIAN, BICYCLIST, SIGN, POLE)
_IS_GROUND = np.zeros(256, dtype=bool)  # labels the ground-plane pass may paint or shade
_IS_GROUND[[ROAD, PAVEMENT, VOID]] = True

# Luminance texture amplitude per label (grey levels per unit of noise) for per-pixel grain and
# for blotchy multi-scale noise. Texture is what separates e.g. a grey car (smooth) from grey
# asphalt (grainy) and grey buildings (blotchy, windows).
_TEX = np.zeros((2, 256), dtype=np.float32)
for _cls, (_f, _b) in {
    SKY: (1.0, 4.0), BUILDING: (4.0, 8.0), POLE: (2.0, 0.0), ROAD: (9.0, 7.0),
    PAVEMENT: (6.0, 6.0), TREE: (11.0, 24.0), SIGN: (1.5, 0.0), FENCE: (4.0, 1.5),
    CAR: (2.0, 2.5), PEDESTRIAN: (5.0, 3.0), BICYCLIST: (5.0, 2.5), VOID: (8.0, 11.0),
}.items():
    _TEX[:, _cls] = (_f, _b)


# --------------------------------------------------------------------------------------------
# cache location and public entry points
# --------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """``$EDGEZOO_CACHE/synthetic`` (default ``~/.cache/edgezoo/synthetic``)."""
    base = os.environ.get(ENV_CACHE) or "~/.cache/edgezoo"
    return Path(base).expanduser() / "synthetic"


def dataset_dirname(seed: int, size: tuple[int, int]) -> str:
    return f"v{GENERATOR_VERSION}-seed{seed}-{size[0]}x{size[1]}"


def _counts_from(num_images: int | Mapping[str, int] | None,
                 defaults: Mapping[str, int]) -> dict[str, int]:
    counts = dict(defaults)
    if num_images is None:
        return counts
    if isinstance(num_images, Mapping):
        unknown = set(num_images) - set(SPLITS)
        if unknown:
            raise DataError(f"synthetic num_images has unknown split(s) {sorted(unknown)}; "
                            f"use {', '.join(SPLITS)}")
        counts.update({k: int(v) for k, v in num_images.items()})
    else:
        counts = {s: int(num_images) for s in SPLITS}
    if any(v < 1 for v in counts.values()):
        raise DataError(f"synthetic num_images must be >= 1 per split, got {counts}")
    return counts


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("generator_version") == GENERATOR_VERSION else None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes never generate the same dataset at once."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: generation stays atomic, just not serialised
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_generated(base: str | Path | None = None, *, seed: int = 0,
                     size: tuple[int, int] = DEFAULT_SIZE,
                     counts: Mapping[str, int] | None = None,
                     need: Mapping[str, int] | None = None, progress: bool = True) -> Path:
    """Generate the dataset on first use and return its folder (SegNet layout).

    A folder is complete only when its ``manifest.json`` exists; it is written last, inside a
    temporary folder that is then renamed into place, so an interrupted run never leaves a
    half-written dataset that looks valid. ``counts`` are the images per split of a fresh
    dataset; ``need`` (default: ``counts``) is what the caller will read. An existing dataset
    with at least ``need`` images is reused; otherwise it is regenerated with the larger counts
    (images do not depend on the counts, so the existing ones come out identical).
    """
    base = Path(base).expanduser() if base is not None else cache_root()
    size = (int(size[0]), int(size[1]))
    if min(size) < 16:
        raise DataError(f"synthetic image size must be at least 16x16, got {size}")
    want = dict(counts or DEFAULT_COUNTS)
    need = dict(need or want)
    final = base / dataset_dirname(seed, size)
    manifest = _read_manifest(final)
    if manifest and all(manifest["counts"].get(s, 0) >= n for s, n in need.items()):
        return final
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create synthetic cache '{base}': {e.strerror}; set "
                        f"{ENV_CACHE} to a writable folder") from None
    with _lock(base / f".{final.name}.lock"):
        manifest = _read_manifest(final)  # another process may have finished meanwhile
        if manifest:
            if all(manifest["counts"].get(s, 0) >= n for s, n in need.items()):
                return final
            want = {s: max(n, int(manifest["counts"].get(s, 0))) for s, n in want.items()}
        for stale in base.glob(f".tmp-{final.name}-*"):  # left by a crashed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = base / f".tmp-{final.name}-{os.getpid()}"
        try:
            _generate_into(tmp, final, seed=seed, size=size, counts=want, progress=progress)
            if final.exists():  # incomplete or too small: move aside, then swap in the new one
                trash = base / f".tmp-{final.name}-old-{os.getpid()}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _generate_into(out: Path, final: Path, *, seed: int, size: tuple[int, int],
                   counts: Mapping[str, int], progress: bool) -> None:
    h, w = size
    total = sum(counts.values())
    print(f"generating synthetic dataset (first use) into {final} ({total} images {h}x{w}, "
          f"seed {seed}) ...", file=sys.stderr, flush=True)
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", file=sys.stderr, disable=not progress,
                   desc="synthetic", leave=False)
    except ImportError:  # tqdm is a dependency, but a progress bar is not worth failing for
        bar = None
    t0 = time.perf_counter()
    freqs: dict[str, list[int]] = {}
    stats: dict[str, Any] = {}
    for split in SPLITS:
        n = counts.get(split, 0)
        if n <= 0:
            continue
        for sub in (split, f"{split}annot", f"{split}inst"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        hist = np.zeros(12, dtype=np.int64)
        chan = np.zeros((3, 256), dtype=np.int64)
        boxes: dict[str, list[dict[str, Any]]] = {}
        for i in range(n):
            s = generate_sample(seed, split, i, size)
            name = f"{split}_{i:05d}.png"
            write_png(out / split / name, s["image"], photo=True)
            write_png(out / f"{split}annot" / name, s["label"])
            write_png(out / f"{split}inst" / name, s["instances"])
            boxes[name] = s["boxes"]
            hist += np.bincount(s["label"].ravel(), minlength=12)[:12]
            if split == "train":  # colour statistics on a 2x2 pixel grid: exact enough, 4x cheaper
                px = s["image"][::2, ::2].reshape(-1, 3).astype(np.intp) + _CHANNEL_OFFSET
                chan += np.bincount(px.ravel(), minlength=768).reshape(3, 256)
            if bar is not None:
                bar.update(1)
        (out / f"{split}_boxes.json").write_text(json.dumps(boxes, separators=(",", ":")))
        freqs[split] = hist.tolist()
        if split == "train":
            v = np.arange(256, dtype=np.float64)
            npx = chan.sum(axis=1)
            mean = (chan * v).sum(axis=1) / npx
            std = np.sqrt((chan * v**2).sum(axis=1) / npx - mean**2)
            stats = {"mean_rgb": [round(x, 3) for x in mean], "std_rgb": [round(x, 3) for x in std]}
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    manifest = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "size": [h, w],
        "counts": dict(counts), "classes": list(CLASS_NAMES) + ["void"],
        "pixel_counts": freqs,
        "pixel_frequency": {s: [round(c / max(1, sum(f)), 5) for c in f] for s, f in freqs.items()},
        "train_stats": stats,  # RGB, 0-255, over a 2x2 pixel grid of every train image
        "seconds": round(elapsed, 2),
        "images_per_second": round(total / max(elapsed, 1e-9), 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


class SyntheticDataset(SegmentationFiles):
    """The generated scenes, read through the CamVid (SegNet layout) reader.

    Adds access to what only the synthetic data has: instance maps and boxes, handy for testing
    detection code paths without a detection dataset.
    """

    manifest: dict[str, Any]

    def instance_path(self, index: int) -> Path:
        img = self.files[index][0]
        return img.parent.parent / f"{img.parent.name}inst" / img.name

    def load_instances(self, index: int) -> np.ndarray:
        """uint16 HxW instance ids (0 = no instance), aligned with the label."""
        with Image.open(self.instance_path(index)) as im:
            return np.asarray(im).astype(np.uint16)

    def boxes(self, index: int) -> list[dict[str, Any]]:
        """[{"class", "instance", "bbox": [x0, y0, x1, y1]}] with x1/y1 exclusive."""
        img = self.files[index][0]
        cache = self.__dict__.setdefault("_boxes", {})
        split = img.parent.name
        if split not in cache:
            cache[split] = json.loads((img.parent.parent / f"{split}_boxes.json").read_text())
        return cache[split][img.name]


def build_synthetic(card: DatasetCard, root: str | Path | None = None, split: str = "train",
                    transform: Callable | None = None, *, num_images: Any = None,
                    seed: int | None = None, size: tuple[int, int] | None = None,
                    progress: bool = True, **kw: Any) -> SyntheticDataset:
    """Generate (first use) and open the synthetic dataset.

    ``root`` is the cache folder holding ``v{version}-seed{seed}-{H}x{W}/`` datasets (default
    ``$EDGEZOO_CACHE/synthetic``), or directly one generated dataset folder. ``num_images`` is
    an int (that many images in *every* split) or a ``{split: n}`` dict over the card defaults;
    ``seed`` and ``size`` (H, W) default to the card's generator settings.
    """
    if kw:
        raise DataError(f"unexpected option(s) for synthetic: {', '.join(sorted(kw))} "
                        "(valid: num_images, seed, size, progress)")
    gen = dict(card.extra.get("generator") or {})
    seed = int(gen.get("seed", 0) if seed is None else seed)
    raw_size = size or gen.get("size") or card.input_size
    try:
        size = (int(raw_size[0]), int(raw_size[1]))
    except (TypeError, ValueError, IndexError):
        raise DataError(f"synthetic size must be (height, width), got {raw_size!r}") from None
    bad = [p for p in (p.strip() for p in split.split("+")) if p not in SPLITS]
    if bad:  # before generating anything
        raise DataError(f"unknown synthetic split {bad[0]!r}; valid splits: {', '.join(SPLITS)} "
                        "(join with '+', e.g. train+val)")
    counts = _counts_from(num_images, gen.get("num_images") or DEFAULT_COUNTS)
    root_path = Path(root).expanduser() if root is not None else None
    if root_path is not None and (root_path / MANIFEST).is_file():
        folder = root_path  # a generated dataset folder given directly
        manifest = _read_manifest(folder)
        if manifest is None:
            raise DataError(f"'{folder / MANIFEST}' is not from generator version "
                            f"{GENERATOR_VERSION}; delete '{folder}' to regenerate it")
    else:
        parts = [p.strip() for p in split.split("+")]
        need = {p: counts[p] for p in parts if p in counts}
        folder = ensure_generated(root_path, seed=seed, size=size, counts=counts, need=need,
                                  progress=progress)
        manifest = _read_manifest(folder) or {}
    files: list[tuple[Path, Path]] = []
    for part in split.split("+"):
        part = part.strip()
        pairs = segnet_pairs(folder, part, what="synthetic", known_splits=card.splits,
                             fix=f"delete '{folder}' to regenerate it")
        if not (root_path is not None and folder == root_path):
            pairs = pairs[: counts.get(part, len(pairs))]
        files.extend(pairs)
    lut, valid = camvid_lut(card.num_classes, VOID, card.ignore_index)
    ds = SyntheticDataset(card, files, lut=lut, valid_raw=valid, what="synthetic",
                          transform=transform, root=folder, split=split)
    ds.manifest = manifest
    return ds


# --------------------------------------------------------------------------------------------
# long-tailed variant (card ``synthetic-lt``, issue #8): a subset of the same training images
# --------------------------------------------------------------------------------------------

LONG_TAIL_DEFAULTS: dict[str, float] = {"keep": 0.4, "temperature": 0.1, "seed": 0}
_LT_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _label_histograms(ds: SegmentationFiles, num_classes: int) -> np.ndarray:
    """[N, C] labelled pixels per class of every image of ``ds`` (labels only, no images)."""
    from zoo.data.base import read_index_png

    hist = np.zeros((len(ds), num_classes), dtype=np.int64)
    for i, (_, lab_path) in enumerate(ds.files):
        lab = ds._lut[read_index_png(lab_path, what="synthetic")]
        hist[i] = np.bincount(lab[lab < num_classes].ravel(), minlength=num_classes)[:num_classes]
    return hist


def long_tail_selection(hist: np.ndarray, *, keep: float, temperature: float,
                        seed: int) -> np.ndarray:
    """Indices (ascending) of the images kept for a steeper long tail.

    Each image gets a *rare-content score* s_i = mean_c(share_ic / f_c): share_ic is class c's
    share of the image's labelled pixels, f_c the class's pixel share over all images (present
    classes only), so an image full of rare classes scores high. ``round(keep * N)`` images are
    drawn without replacement with probability decreasing in the standardised score (Gumbel
    top-k with keys -z_i / temperature + Gumbel noise from ``seed``): temperature -> 0 keeps the
    images with the least rare content (steepest tail), a large temperature approaches a
    uniform random subset (the parent's class profile). Deterministic in (hist, keep,
    temperature, seed).
    """
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.shape[0]
    if not 0.0 < keep <= 1.0:
        raise DataError(f"synthetic-lt keep must be a fraction in (0, 1], got {keep}")
    if temperature < 0:
        raise DataError(f"synthetic-lt temperature must be >= 0, got {temperature}")
    m = min(n, max(2, int(round(keep * n))))  # 2: one training batch of two at least
    total = hist.sum(axis=0)
    present = total > 0
    freq = total[present] / total.sum()
    per_image = hist[:, present] / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    score = (per_image / freq).mean(axis=1)
    z = (score - score.mean()) / (score.std() or 1.0)
    gumbel = np.random.default_rng([int(seed), 0x4C54]).gumbel(size=n)
    key = -z / temperature + gumbel if temperature > 0 else -z
    chosen = np.argsort(-key, kind="stable")[:m]
    return np.sort(chosen)


def tail_share(hist: np.ndarray, k: int = 5, classes: np.ndarray | None = None) -> float:
    """Share of the labelled pixels of ``hist`` ([N, C] or [C]) that belong to ``classes``
    (default: the k rarest classes of ``hist`` itself)."""
    total = np.asarray(hist, dtype=np.float64).reshape(-1, np.shape(hist)[-1]).sum(axis=0)
    if classes is None:
        classes = np.argsort(total, kind="stable")[:k]
    return float(total[np.asarray(classes)].sum() / max(total.sum(), 1.0))


def build_synthetic_lt(card: DatasetCard, root: str | Path | None = None, split: str = "train",
                       transform: Callable | None = None, *, keep: float | None = None,
                       temperature: float | None = None, select_seed: int | None = None,
                       **kw: Any) -> SyntheticDataset:
    """The synthetic scenes with a steeper long tail in the *training* split (card ``synthetic-lt``).

    Nothing new is generated and the parent dataset (card ``source``, default ``synthetic``) is
    read, never modified: ``train`` is the subset of the parent's training images chosen by
    `long_tail_selection` (settings: the card's ``long_tail`` section, overridden by ``keep``,
    ``temperature``, ``select_seed``); ``val`` and ``test`` are the parent's splits unchanged,
    so results are measured on the usual class profile. Other options (``num_images``, ``seed``,
    ``size``, ``progress``) go to `build_synthetic`; ``num_images`` counts the *pool* the
    training subset is drawn from. The returned dataset's ``long_tail`` dict records the
    settings and the measured pixel profile of the pool and of the subset.
    """
    from zoo.data.cards import load_card

    parent = load_card(str(card.extra.get("source", "synthetic")))
    opts = {**LONG_TAIL_DEFAULTS, **dict(card.extra.get("long_tail") or {})}
    for key, value in (("keep", keep), ("temperature", temperature), ("seed", select_seed)):
        if value is not None:
            opts[key] = value
    parts = [p.strip() for p in split.split("+")]
    files: list[tuple[Path, Path]] = []
    info: dict[str, Any] = {}
    base = None
    for part in parts:
        sub = build_synthetic(parent, root, part, None, **kw)
        if base is None:
            base = sub
        pairs = list(sub.files)
        if part == "train":
            key = (tuple(str(p[1]) for p in pairs), float(opts["keep"]), float(opts["temperature"]),
                   int(opts["seed"]))
            if key not in _LT_CACHE:
                hist = _label_histograms(sub, card.num_classes)
                chosen = long_tail_selection(hist, keep=float(opts["keep"]),
                                             temperature=float(opts["temperature"]),
                                             seed=int(opts["seed"]))
                _LT_CACHE[key] = (hist, chosen)
            hist, chosen = _LT_CACHE[key]
            pairs = [pairs[i] for i in chosen]
            pool_px, kept_px = hist.sum(axis=0), hist[chosen].sum(axis=0)
            rare = np.argsort(pool_px, kind="stable")[:5]
            present = kept_px > 0
            info = {**opts, "pool_images": len(hist), "train_images": len(chosen),
                    "pool_pixel_frequency": [round(float(v), 6) for v in pool_px / pool_px.sum()],
                    "train_pixel_frequency": [round(float(v), 6) for v in kept_px / kept_px.sum()],
                    "pool_tail_share": round(tail_share(pool_px, classes=rare), 6),
                    "train_tail_share": round(tail_share(kept_px, classes=rare), 6),
                    "train_imbalance": round(float(kept_px.max() / kept_px[present].min()), 1)}
        files.extend(pairs)
    assert base is not None
    lut, valid = camvid_lut(card.num_classes, VOID, card.ignore_index)
    ds = SyntheticDataset(card, files, lut=lut, valid_raw=valid, what="synthetic-lt",
                          transform=transform, root=base.root, split=split)
    ds.manifest = base.manifest
    ds.long_tail = info
    return ds


# --------------------------------------------------------------------------------------------
# noise banks (shared by all images of one seed and size)
# --------------------------------------------------------------------------------------------

_BANK_PAD = 48
_SENSOR_SCALE = 32  # sensor noise bank resolution: 1/32 of a standard deviation
_BANKS: dict[tuple[int, int, int], dict[str, np.ndarray]] = {}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((h // cell + 3, w // cell + 3), dtype=np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize(
        ((w // cell + 3) * cell, (h // cell + 3) * cell), Image.BICUBIC))[:h, :w]
    return (big / (big.std() + 1e-6)).astype(np.float32)


def _banks(seed: int, h: int, w: int) -> dict[str, np.ndarray]:
    """Noise fields generated once per (seed, size); images take randomly offset crops.

    Drawing fresh Gaussian noise per image would cost more than all the rest of the rendering.
    """
    key = (seed, h, w)
    if key not in _BANKS:
        rng = np.random.default_rng([seed, 0x5EED, h, w])
        ph, pw = h + _BANK_PAD, w + _BANK_PAD
        _BANKS.clear()  # one size at a time is all a run needs; keeps memory flat
        fine = rng.standard_normal((ph, pw), dtype=np.float32)
        blotch = _smooth_noise(rng, ph, pw, 3) + _smooth_noise(rng, ph, pw, 12)
        _BANKS[key] = {
            "fine": fine,  # grain
            "blotch": blotch / blotch.std(),  # leaves, stains, weathering (3 px + 12 px scales)
            # per-channel planes of N(0, 1) * _SENSOR_SCALE: _develop scales them in int16
            "sensor": np.rint(rng.standard_normal((3, ph, pw), dtype=np.float32)
                              * _SENSOR_SCALE).astype(np.int16),
        }
    return _BANKS[key]


# --------------------------------------------------------------------------------------------
# scene rendering
# --------------------------------------------------------------------------------------------

class _Rng:
    """A numpy Generator with a cheaper scalar ``uniform``; the same stream, the same values.

    ``Generator.uniform(low, high)`` returns ``low + (high - low) * next_double``, and
    ``random()`` is ``next_double``, so computing it here gives identical bits; it skips ~1.5 us
    of argument handling per call, and a scene makes ~550 of them.
    """

    __slots__ = ("random", "normal", "integers", "poisson", "lognormal")

    def __init__(self, gen: np.random.Generator) -> None:
        self.random, self.normal, self.integers = gen.random, gen.normal, gen.integers
        self.poisson, self.lognormal = gen.poisson, gen.lognormal

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of a few projected box corners."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


class _Scene:
    """Camera, canvases and drawing helpers for one image.

    World coordinates: X to the right, Y up from the ground, z forward (metres); the camera
    is at height ``hc`` looking down the street.

    Every primitive is drawn once, as its sequence number (its *id*), into one of three 32-bit
    canvases: ``solid`` (labelled shapes: colour, label, instance, facade), ``coat`` (paint:
    colour only, the label underneath stays) and ``border`` (void outlines: label only). Ids
    grow in drawing order, so at each pixel the larger of two canvases' ids is the one on top;
    `_compose` turns the canvases into colour indices and labels with a few table lookups. One
    draw per primitive instead of one per output map, and labels stay pixel-exact because all
    maps come from the same rasterised shape.
    """

    def __init__(self, rng: _Rng, h: int, w: int) -> None:
        self.rng, self.h, self.w = rng, h, w
        self.f = w * rng.uniform(0.7, 1.0)
        self.yh = h * rng.uniform(0.42, 0.56)
        self.xv = w * (0.5 + rng.uniform(-0.15, 0.15))
        self.hc = rng.uniform(1.2, 1.8)
        roll = math.radians(min(4.0, max(-4.0, float(rng.normal(0.0, 1.5)))))
        self.cr, self.sr = math.cos(roll), math.sin(roll)
        self.cx, self.cy = w / 2.0, h / 2.0
        self.solid = Image.new("I", (w, h), 0)
        self.coat = Image.new("I", (w, h), 0)
        self.border = Image.new("I", (w, h), 0)
        self.ds, self.dc = ImageDraw.Draw(self.solid), ImageDraw.Draw(self.coat)
        self.db = ImageDraw.Draw(self.border)
        self.has_border = False
        # per id: colour, label, instance id, surface id; id 0 is the empty (black) sky
        self.colours: list[Any] = [(0, 0, 0)]
        self.labels: list[int] = [SKY]
        self.inst_of: list[int] = [0]
        self.surface_of: list[int] = [0]
        self.instances: list[int] = [0]  # class of each instance id (index 0 unused)
        self.surfaces: list[tuple] = [(0,) * 9]  # facade parameters per surface id (0: none)
        self.glass: list[Any] = [(0, 0, 0)]  # window glass colour per surface id
        self.void_outline_p = rng.uniform(0.2, 0.7)
        self.road_col: Any = (90, 90, 90)

    # -- geometry ------------------------------------------------------------------------------
    def rot(self, x: float, y: float) -> tuple[float, float]:
        dx, dy = x - self.cx, y - self.cy
        return (self.cx + self.cr * dx - self.sr * dy, self.cy + self.sr * dx + self.cr * dy)

    def P(self, X: float, Y: float, z: float) -> tuple[float, float]:
        """Project a world point; the hot path of the renderer, hence the inlined rotation."""
        k = self.f / z
        dx = self.xv + k * X - self.cx
        dy = self.yh + k * (self.hc - Y) - self.cy
        return (self.cx + self.cr * dx - self.sr * dy, self.cy + self.sr * dx + self.cr * dy)

    def px(self, metres: float, z: float) -> float:
        return self.f * metres / z

    def quad_x(self, X: float, y0: float, y1: float, z0: float, z1: float):
        """Quad on the plane X = const (facades, fences), from depth z0 to z1, heights y0..y1."""
        P = self.P
        return [P(X, y0, z0), P(X, y1, z0), P(X, y1, z1), P(X, y0, z1)]

    def quad_z(self, x0: float, x1: float, y0: float, y1: float, z: float):
        """Quad on the plane z = const (things facing the camera)."""
        P = self.P
        return [P(x0, y0, z), P(x1, y0, z), P(x1, y1, z), P(x0, y1, z)]

    def ground(self, x0: float, x1: float, z0: float, z1: float):
        P = self.P
        return [P(x0, 0.0, z0), P(x1, 0.0, z0), P(x1, 0.0, z1), P(x0, 0.0, z1)]

    # -- drawing -------------------------------------------------------------------------------
    def add_surface(self, orient: int, plane: float, win: tuple, glass, height: float) -> int:
        """Surface id for a facade: orientation (0: along the street at X = plane, 1: facing
        the camera at z = plane), window layout ``win`` (column spacing, width ratio, floor
        height, height ratio, ground floor, offset), glass colour and building height."""
        self.surfaces.append((orient, plane, *win, height))
        self.glass.append(glass)
        return len(self.surfaces) - 1

    def new_instance(self, cls: int) -> int:
        self.instances.append(cls)
        return len(self.instances) - 1

    def _id(self, color, cls: int, inst: int = 0, sid: int = 0) -> int:
        """Next primitive id, with what it stands for in the lookup tables."""
        self.colours.append(color)
        self.labels.append(cls)
        self.inst_of.append(inst)
        self.surface_of.append(sid)
        return len(self.labels) - 1

    def poly(self, pts, cls: int, color, inst: int = 0, sid: int | None = None) -> None:
        self.ds.polygon(pts, fill=self._id(color, cls, inst, sid or 0))

    def ellipse(self, box, cls: int, color, inst: int = 0, width: int = 0) -> None:
        x0, y0, x1, y1 = box
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        ink = self._id(color, cls, inst)
        if width:
            self.ds.ellipse(box, outline=ink, width=width)
        else:
            self.ds.ellipse(box, fill=ink)

    def line(self, pts, width: float, cls: int, color, inst: int = 0) -> None:
        self.ds.line(pts, fill=self._id(color, cls, inst), width=max(1, int(round(width))))

    def paint(self, pts, color) -> None:
        """Appearance only (windows, lights, markings): the label underneath is unchanged."""
        self.dc.polygon(pts, fill=self._id(color, VOID))

    def paint_ellipse(self, box, color) -> None:
        """`paint` for an ellipse (clouds, lamps, sign faces); ``box`` corners in any order."""
        x0, y0, x1, y1 = box
        self.dc.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
                        fill=self._id(color, VOID))

    def void_outline(self, pts) -> None:
        """CamVid leaves object borders unlabelled in places; mimic it on some objects."""
        if self.rng.random() < self.void_outline_p:
            self.has_border = True
            self.db.line(list(pts) + [pts[0]], fill=self._id((0, 0, 0), VOID), width=1)

    def jit(self, color, amount: float = 12.0):
        r0, r1, r2 = self.rng.normal(0.0, amount, 3).tolist()
        return (color[0] + r0, color[1] + r1, color[2] + r2)


def _pick(rng: _Rng, options):
    return options[int(rng.integers(len(options)))]


_CAR_COLORS = [(200, 200, 200), (120, 120, 125), (90, 92, 95), (30, 30, 35), (235, 235, 235),
               (150, 30, 30), (30, 50, 120), (40, 70, 50), (170, 160, 140), (110, 110, 120),
               (160, 165, 170), (200, 150, 40)]
_BUILDING_COLORS = [(150, 150, 150), (120, 118, 115), (185, 170, 140), (150, 85, 65),
                    (205, 200, 190), (85, 85, 90), (175, 150, 150), (95, 110, 125),
                    (160, 140, 110), (130, 130, 140)]
_CLOTHES = [(30, 30, 35), (50, 50, 70), (90, 90, 95), (140, 30, 35), (40, 60, 110),
            (160, 150, 130), (200, 200, 200), (70, 90, 60), (110, 80, 60), (20, 20, 20)]
_SKIN = [(225, 190, 160), (190, 140, 110), (120, 85, 60), (80, 55, 40), (60, 50, 45)]


def _draw_sky(S: _Scene) -> dict[str, Any]:
    rng, h, w = S.rng, S.h, S.w
    kind = _pick(rng, ["clear", "clear", "overcast", "hazy"])
    if kind == "clear":
        top = np.array([rng.uniform(60, 110), rng.uniform(110, 160), rng.uniform(180, 235)])
        bottom = np.array([rng.uniform(160, 210), rng.uniform(185, 220), rng.uniform(215, 245)])
    elif kind == "overcast":
        g = rng.uniform(140, 215)
        top = np.array([g, g, g + rng.uniform(0, 12)]) - rng.uniform(0, 25)
        bottom = np.array([g, g, g]) + rng.uniform(0, 20)
    else:
        top = np.array([rng.uniform(150, 190), rng.uniform(150, 185), rng.uniform(160, 200)])
        bottom = np.array([rng.uniform(200, 235), rng.uniform(180, 215), rng.uniform(150, 200)])
    bands = 10
    y_top, y_bot = -0.3 * h, S.yh + 0.15 * h
    for b in range(bands):
        t = b / (bands - 1)
        c = top * (1 - t) + bottom * t
        y0 = y_top + (y_bot - y_top) * b / bands
        y1 = y_top + (y_bot - y_top) * (b + 1) / bands + 1
        pts = [S.rot(-w, y0), S.rot(2 * w, y0), S.rot(2 * w, y1), S.rot(-w, y1)]
        S.paint(pts, c)
    # below the sky bands, an unlabelled ground base (visible only through gaps)
    base = [S.rot(-w, S.yh), S.rot(2 * w, S.yh), S.rot(2 * w, 3 * h), S.rot(-w, 3 * h)]
    S.poly(base, VOID, S.jit((105, 100, 85), 15))
    if kind != "overcast" or rng.random() < 0.5:
        for _ in range(int(rng.integers(0, 6))):
            cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(0.0, 0.8) * S.yh
            cw = rng.uniform(0.08, 0.35) * w
            shade = rng.uniform(200, 250) if kind != "overcast" else rng.uniform(110, 170)
            for _ in range(int(rng.integers(2, 6))):
                ex, ey = cx + rng.normal(0, cw * 0.3), cy + rng.normal(0, cw * 0.08)
                ew, eh = cw * rng.uniform(0.3, 0.6), cw * rng.uniform(0.08, 0.2)
                S.paint_ellipse((ex - ew, ey - eh, ex + ew, ey + eh),
                                (shade, shade, shade + 5) + rng.normal(0, 5, 3))
    return {"kind": kind, "horizon_color": bottom}


def _draw_far_background(S: _Scene, sky: dict[str, Any]) -> None:
    """Distant skyline / tree line at the horizon: tiny, hazy, low contrast."""
    rng, w = S.rng, S.w
    haze = sky["horizon_color"]
    if rng.random() < 0.7:
        x = -0.5 * w
        base_col = np.array(_pick(rng, _BUILDING_COLORS), dtype=float)
        while x < 1.5 * w:
            bw = rng.uniform(0.02, 0.12) * w
            bh = rng.uniform(0.01, 0.09) * S.h
            t = rng.uniform(0.3, 0.7)
            col = base_col * (1 - t) + haze * t + rng.normal(0, 8, 3)
            S.poly([S.rot(x, S.yh + 2), S.rot(x + bw, S.yh + 2), S.rot(x + bw, S.yh - bh),
                    S.rot(x, S.yh - bh)], BUILDING, col, sid=0)
            x += bw
    if rng.random() < 0.5:
        n = 40
        xs = np.linspace(-0.5 * w, 1.5 * w, n)
        hs = np.abs(rng.normal(0.02, 0.015, n)) * S.h + 1
        col = np.array((60, 85, 45)) * 0.6 + haze * 0.4
        pts = [S.rot(float(x), S.yh - float(hh)) for x, hh in zip(xs, hs)]
        pts += [S.rot(1.5 * w, S.yh + 2), S.rot(-0.5 * w, S.yh + 2)]
        S.poly(pts, TREE, col + rng.normal(0, 6, 3))


class _Street:
    """Street cross-section in metres: road [xl, xr], pavements, facade lines."""

    def __init__(self, rng: _Rng) -> None:
        self.xl = -rng.uniform(2.5, 7.0)
        self.xr = rng.uniform(2.5, 7.0)
        self.pl = rng.uniform(2.0, 6.0)
        self.pr = rng.uniform(2.0, 6.0)
        self.verge_l = rng.uniform(0.5, 4.0) if rng.random() < 0.25 else 0.0
        self.verge_r = rng.uniform(0.5, 4.0) if rng.random() < 0.25 else 0.0
        self.buildings_l = rng.random() < 0.88
        self.buildings_r = rng.random() < 0.88
        # shadow edge per 0.5 m depth bin, for ground pixels (filled by the buildings pass)
        self.zbins = 800
        self.shadow_l = np.full(self.zbins, -1e9, dtype=np.float32)
        self.shadow_r = np.full(self.zbins, 1e9, dtype=np.float32)

    def outer(self, side: int) -> float:
        """X of the far edge of the pavement (+verge) on a side (-1 left, +1 right)."""
        return self.xl - self.pl - self.verge_l if side < 0 else self.xr + self.pr + self.verge_r


def _draw_ground(S: _Scene, st: _Street) -> dict[str, Any]:
    rng = S.rng
    zn, zf = 0.3, 2000.0
    g = rng.uniform(60, 125)
    road_col = (g + rng.normal(0, 4), g + rng.normal(0, 4), g + rng.uniform(-4, 10))
    if rng.random() < 0.15:  # concrete road, close to pavement colours
        g = rng.uniform(135, 170)
        road_col = (g, g, g - rng.uniform(0, 10))
    S.poly(S.ground(st.xl, st.xr, zn, zf), ROAD, road_col)
    S.road_col = road_col
    pav = _pick(rng, [(150, 150, 150), (175, 172, 165), (160, 120, 105), (190, 180, 160),
                      (125, 125, 130)])
    for side in (-1, 1):
        col = S.jit(pav, 8)
        if side < 0:
            S.poly(S.ground(st.xl - st.pl, st.xl, zn, zf), PAVEMENT, col)
            if st.verge_l:
                S.poly(S.ground(st.outer(-1), st.xl - st.pl, zn, zf), TREE,
                       S.jit((70, 105, 45), 15))
        else:
            S.poly(S.ground(st.xr, st.xr + st.pr, zn, zf), PAVEMENT, col)
            if st.verge_r:
                S.poly(S.ground(st.xr + st.pr, st.outer(1), zn, zf), TREE,
                       S.jit((70, 105, 45), 15))
    # asphalt repairs and manholes: appearance only, still Road
    for _ in range(int(rng.integers(0, 4))):
        z0 = rng.uniform(3, 40)
        x0 = rng.uniform(st.xl, st.xr - 1)
        S.paint(S.ground(x0, min(st.xr, x0 + rng.uniform(0.5, 3)), z0, z0 + rng.uniform(0.5, 6)),
                np.array(road_col) * rng.uniform(0.75, 1.2))
    # lane layout for the markings pass
    width = st.xr - st.xl
    n_lanes = max(1, int(round(width / rng.uniform(2.8, 3.6))))
    dividers = [st.xl + width * k / n_lanes for k in range(1, n_lanes)]
    return {
        "dividers": dividers, "lanes": n_lanes, "lane_width": width / n_lanes,
        "edge_lines": rng.random() < 0.6,
        "marking": _pick(rng, [(225, 225, 220), (230, 230, 225), (215, 185, 60)]),
        "dash": (rng.uniform(6.0, 12.0), rng.uniform(0.25, 0.6)),
        "crosswalk": rng.uniform(6, 25) if rng.random() < 0.2 else None,
        "tile": rng.uniform(0.3, 0.8),
        "curb": S.jit((175, 175, 170), 12),
    }


def _draw_buildings(S: _Scene, st: _Street, sunny: bool, sun_side: int) -> None:
    rng = S.rng
    facades = []
    for side in (-1, 1):
        if not (st.buildings_l if side < 0 else st.buildings_r):
            continue
        z = rng.uniform(0.5, 5.0)
        z_end = rng.uniform(50, 220)
        x_line = st.outer(side)
        while z < z_end:
            length = rng.uniform(6, 30)
            if rng.random() < 0.15:  # gap: sky, trees or the next street show through
                z += rng.uniform(3, 15)
                continue
            setback = rng.uniform(0, 1.5) if rng.random() < 0.5 else 0.0
            height = min(45.0, max(3.5, float(rng.lognormal(math.log(12), 0.5))))
            facades.append((z, side, x_line + side * setback, z + length, height))
            z += length
    if rng.random() < 0.6:  # a building closing the street far away
        zb = rng.uniform(80, 250)
        facades.append((zb, 0, 0.0, zb, rng.uniform(10, 40)))
    facades.sort(key=lambda f: -f[0])
    for z0, side, x, z1, height in facades:
        base = np.array(_pick(rng, _BUILDING_COLORS), dtype=float) + rng.normal(0, 10, 3)
        lit = 0.65 if (sunny and side == sun_side) else 1.0
        win = (rng.uniform(1.5, 4.0), rng.uniform(0.3, 0.65),  # column spacing, width ratio
               rng.uniform(2.8, 3.6), rng.uniform(0.3, 0.7),   # floor height, window height ratio
               rng.uniform(0, 4), rng.uniform(0.0, 3.0))       # ground floor, offset
        dark = rng.random() < 0.6
        glass = (np.array((40, 50, 60)) if dark else np.array((150, 170, 190))) + rng.normal(0, 12, 3)
        if side == 0:  # end-of-street building: faces the camera
            half = rng.uniform(15, 60)
            sid = S.add_surface(1, z0, win, glass, height)
            S.poly(S.quad_z(-half + rng.uniform(-10, 10), half, 0, height, z0), BUILDING,
                   base * 0.9, sid=sid)
            continue
        sid = S.add_surface(0, x, win, glass, height)
        S.poly(S.quad_x(x, 0, height, z0, z1), BUILDING, base * lit, sid=sid)
        # front wall at the near end, visible where it sticks out past the building before it
        sid2 = S.add_surface(1, z0, win, glass, height)
        S.poly([S.P(x, 0, z0), S.P(x, height, z0), S.P(x + side * 12, height, z0),
                S.P(x + side * 12, 0, z0)], BUILDING, base * 0.8, sid=sid2)
        if sunny and side == sun_side:
            k = rng.uniform(0.15, 0.6)
            lo, hi = int(z0 / 0.5), min(st.zbins, int(z1 / 0.5) + 1)
            if side < 0:
                st.shadow_l[lo:hi] = np.maximum(st.shadow_l[lo:hi], x + k * height)
            else:
                st.shadow_r[lo:hi] = np.minimum(st.shadow_r[lo:hi], x - k * height)
        # shop signs on the facade (SignSymbol things)
        if rng.random() < 0.7 and S.px(1.0, z0) > 2:
            sz = rng.uniform(z0, min(z1, z0 + 6))
            inst = S.new_instance(SIGN)
            pts = S.quad_x(x - side * 0.05, rng.uniform(2.4, 3.2), rng.uniform(3.5, 4.6), sz,
                           sz + rng.uniform(1.0, 5.0))
            S.poly(pts, SIGN, _pick(rng, [(200, 30, 30), (30, 60, 160), (230, 230, 230),
                                          (240, 200, 40), (30, 130, 60)]), inst)


_CROWN = [2 * math.pi * k / 14 for k in range(14)]  # crown outline angles


def _tree(S: _Scene, X: float, z: float) -> None:
    rng = S.rng
    trunk_h = rng.uniform(1.5, 4.0)
    r = rng.uniform(1.2, 4.0)
    tw = rng.uniform(0.2, 0.5)
    trunk_col = S.jit((70, 55, 40), 10)
    S.poly(S.quad_z(X - tw / 2, X + tw / 2, 0, trunk_h + r * 0.5, z), TREE, trunk_col)
    leaf = np.array(_pick(rng, [(50, 85, 35), (35, 65, 30), (80, 110, 45), (60, 75, 40),
                                (120, 100, 40), (30, 45, 30)]), dtype=float)
    cy = trunk_h + r * 0.8
    for blob in range(int(rng.integers(1, 4))):
        bx = X + (rng.normal(0, r * 0.35) if blob else 0.0)
        by = cy + (rng.normal(0, r * 0.25) if blob else 0.0)
        br = r * (rng.uniform(0.55, 0.8) if blob else 1.0)
        turn = float(rng.uniform(0, 1))
        rad = (br * (0.72 + 0.4 * rng.random(len(_CROWN)))).tolist()
        pts = [S.P(bx + rr * math.cos(a + turn), max(0.3, by + rr * math.sin(a + turn) * 0.9), z)
               for a, rr in zip(_CROWN, rad)]
        S.poly(pts, TREE, leaf * rng.uniform(0.8, 1.2))


def _pole(S: _Scene, X: float, z: float, side: int, kind: str) -> None:
    rng = S.rng
    wpx = min(4.0, max(1.0, S.px(rng.uniform(0.08, 0.2), z)))
    col = _pick(rng, [(90, 90, 95), (60, 70, 60), (40, 40, 40), (150, 150, 155), (120, 110, 90)])
    col = S.jit(col, 8)
    inst = S.new_instance(POLE)
    if kind == "lamp":
        height = rng.uniform(5, 9)
        S.line([S.P(X, 0, z), S.P(X, height, z)], wpx, POLE, col, inst)
        arm = -side * rng.uniform(0.8, 2.0)
        S.line([S.P(X, height, z), S.P(X + arm, height + 0.2, z)], max(1, wpx * 0.7), POLE, col,
               inst)
        hx = X + arm
        S.poly(S.quad_z(hx - 0.3, hx + 0.3, height - 0.05, height + 0.25, z), POLE, col, inst)
        return
    height = rng.uniform(2.2, 3.8) if kind == "sign" else rng.uniform(3.0, 4.5)
    S.line([S.P(X, 0, z), S.P(X, height, z)], wpx, POLE, col, inst)
    if kind == "light":
        sinst = S.new_instance(SIGN)
        bw, bh = 0.35, 1.0
        S.poly(S.quad_z(X - bw / 2, X + bw / 2, height, height + bh, z), SIGN,
               S.jit((35, 35, 35), 6), sinst)
        on = int(rng.integers(3))
        for k, c in enumerate([(230, 40, 30), (240, 180, 30), (40, 220, 90)]):
            cy = height + bh * (0.8 - 0.3 * k)
            lc = c if k == on else (60, 55, 50)
            a, b = S.P(X - 0.1, cy - 0.1, z), S.P(X + 0.1, cy + 0.1, z)
            S.paint_ellipse((a[0], a[1], b[0], b[1]), lc)
        return
    for k in range(1 if rng.random() < 0.75 else 2):
        s = rng.uniform(0.5, 1.1)
        cy = height - k * (s + 0.1)
        _sign(S, X, cy, z, s)


def _sign(S: _Scene, X: float, cy: float, z: float, s: float) -> None:
    rng = S.rng
    inst = S.new_instance(SIGN)
    shape = _pick(rng, ["circle", "triangle", "square", "diamond", "rect", "octagon"])
    face = _pick(rng, [(200, 30, 30), (30, 70, 170), (235, 235, 235), (240, 200, 40),
                       (30, 130, 60)])
    rim = _pick(rng, [(200, 30, 30), (240, 240, 240), (30, 30, 30)])
    h2 = s / 2
    if shape == "circle":
        a, b = S.P(X - h2, cy - h2, z), S.P(X + h2, cy + h2, z)
        S.ellipse((a[0], a[1], b[0], b[1]), SIGN, rim, inst)
        a, b = S.P(X - h2 * 0.75, cy - h2 * 0.75, z), S.P(X + h2 * 0.75, cy + h2 * 0.75, z)
        S.paint_ellipse((a[0], a[1], b[0], b[1]), face)
        return
    if shape == "triangle":
        outer = [(X - h2, cy - h2 * 0.8), (X + h2, cy - h2 * 0.8), (X, cy + h2)]
    elif shape == "square":
        outer = [(X - h2, cy - h2), (X + h2, cy - h2), (X + h2, cy + h2), (X - h2, cy + h2)]
    elif shape == "diamond":
        outer = [(X, cy - h2), (X + h2, cy), (X, cy + h2), (X - h2, cy)]
    elif shape == "rect":
        outer = [(X - s, cy - h2 * 0.5), (X + s, cy - h2 * 0.5), (X + s, cy + h2 * 0.5),
                 (X - s, cy + h2 * 0.5)]
    else:
        outer = [(X + h2 * math.cos(a), cy + h2 * math.sin(a))
                 for a in np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8]
    pts = [S.P(x, y, z) for x, y in outer]
    S.poly(pts, SIGN, rim, inst)
    inner = [S.P(X + (x - X) * 0.75, cy + (y - cy) * 0.75, z) for x, y in outer]
    S.paint(inner, face)
    S.void_outline(pts)


def _fence(S: _Scene, X: float, z0: float, z1: float) -> None:
    rng = S.rng
    height = rng.uniform(0.9, 1.8)
    col = S.jit(_pick(rng, [(40, 60, 40), (35, 35, 35), (110, 110, 110), (120, 90, 60),
                            (210, 210, 205)]), 8)
    spacing = rng.uniform(0.12, 0.35)
    if rng.random() < 0.25:  # solid / mesh fence panel
        S.poly(S.quad_x(X, 0, height, z0, z1), FENCE, col)
        return
    bar_m = rng.uniform(0.03, 0.08)
    z = z0
    while z < z1:
        gap = S.px(spacing * abs(X), z) / z if X else 0.0
        if gap < 2.5:  # bars closer than ~2 px: draw the rest as a dense band
            S.poly(S.quad_x(X, 0, height, z, z1), FENCE, col)
            break
        S.line([S.P(X, 0, z), S.P(X, height, z)], S.px(bar_m, z), FENCE, col)
        z += spacing
    for rail_y in (height * 0.95, height * rng.uniform(0.3, 0.6)):
        S.poly(S.quad_x(X, rail_y - 0.04, rail_y + 0.04, z0, z1), FENCE, col)


def _car(S: _Scene, Xc: float, z: float) -> None:
    rng = S.rng
    big = rng.random() < 0.15
    w = rng.uniform(2.0, 2.5) if big else rng.uniform(1.65, 1.95)
    h = rng.uniform(2.2, 3.2) if big else rng.uniform(1.35, 1.65)
    length = rng.uniform(5.0, 9.0) if big else rng.uniform(3.8, 4.8)
    col = np.array(_pick(rng, _CAR_COLORS), dtype=float) + rng.normal(0, 8, 3)
    inst = S.new_instance(CAR)
    x0, x1 = Xc - w / 2, Xc + w / 2
    # contact shadow on the ground: painted (label stays), drawn before the car so it hides it
    S.paint(S.ground(x0 - 0.15, x1 + 0.15, z - 0.2, z + length),
            np.asarray(S.road_col) * rng.uniform(0.35, 0.6))
    hb = h if big else h * rng.uniform(0.5, 0.6)
    P = S.P
    body = _hull([P(x, y, zz) for x in (x0, x1) for y in (0.2, hb) for zz in (z, z + length)])
    S.poly(body, CAR, col, inst)
    glass = (np.array((35, 40, 50)) + rng.normal(0, 8, 3))
    if not big:
        cw = w * 0.42
        zc0, zc1 = z + length * rng.uniform(0.2, 0.3), z + length * rng.uniform(0.65, 0.8)
        cabin = _hull([P(x, y, zz) for x in (Xc - cw, Xc + cw) for y in (hb, h)
                       for zz in (zc0, zc1)])
        S.poly(cabin, CAR, col * 0.95, inst)
        S.paint([P(Xc - cw * 0.85, hb + 0.05, zc0), P(Xc + cw * 0.85, hb + 0.05, zc0),
                 P(Xc + cw * 0.75, h - 0.05, zc0), P(Xc - cw * 0.75, h - 0.05, zc0)], glass)
        side_x = Xc - cw if Xc > cw else (Xc + cw if Xc < -cw else None)
        if side_x is not None:
            S.paint([P(side_x, hb + 0.05, zc0 + 0.1), P(side_x, h - 0.08, zc0 + 0.3),
                     P(side_x, h - 0.08, zc1 - 0.3), P(side_x, hb + 0.05, zc1 - 0.1)], glass * 1.2)
    else:
        S.paint(S.quad_z(x0 + 0.15, x1 - 0.15, h * 0.65, h * 0.9, z), glass)
    # rear face details: lights, plate, bumper
    S.paint(S.quad_z(x0 + 0.05, x1 - 0.05, 0.25, 0.45, z), col * 0.55)
    for lx in (x0 + 0.08, x1 - 0.33):
        S.paint(S.quad_z(lx, lx + 0.25, hb - 0.3, hb - 0.12, z),
                _pick(rng, [(200, 30, 25), (230, 120, 30), (180, 20, 20)]))
    S.paint(S.quad_z(Xc - 0.26, Xc + 0.26, 0.48, 0.6, z), (215, 215, 200))
    # wheels (labelled Car): under the rear face, and on the visible side
    wr = 0.33
    for wx in (x0 + 0.05, x1 - 0.3):
        S.poly(S.quad_z(wx, wx + 0.25, 0.0, 0.25, z), CAR, (20, 20, 22), inst)
    side = x0 if Xc > 0.3 else (x1 if Xc < -0.3 else None)
    if side is not None:
        for wz in (z + length * 0.18, z + length * 0.8):
            xa, xb = P(side, wr, wz - wr)[0], P(side, wr, wz + wr)[0]
            ya, yb = P(side, 0.0, wz)[1], P(side, 2 * wr, wz)[1]
            S.ellipse((xa, ya, xb, yb), CAR, (22, 22, 24), inst)
    S.void_outline(body)


def _pedestrian(S: _Scene, X: float, z: float) -> None:
    rng = S.rng
    h = rng.uniform(1.45, 1.92)
    sw = rng.uniform(0.38, 0.52)
    inst = S.new_instance(PEDESTRIAN)
    P = S.P
    top, trousers = _pick(rng, _CLOTHES), _pick(rng, _CLOTHES)
    stride = rng.uniform(0.0, 0.3)
    hip = 0.5 * h
    for sgn in (-1, 1):
        lx = X + sgn * 0.08
        S.poly([P(lx - 0.065, hip, z), P(lx + 0.065, hip, z),
                P(lx + sgn * stride / 2 + 0.06, 0, z), P(lx + sgn * stride / 2 - 0.06, 0, z)],
               PEDESTRIAN, S.jit(trousers, 6), inst)
    torso = [P(X - sw / 2, 0.82 * h, z), P(X + sw / 2, 0.82 * h, z),
             P(X + sw * 0.38, hip - 0.05, z), P(X - sw * 0.38, hip - 0.05, z)]
    S.poly(torso, PEDESTRIAN, S.jit(top, 6), inst)
    for sgn in (-1, 1):
        swing = rng.uniform(-0.15, 0.15)
        ax = X + sgn * (sw / 2 - 0.04)
        S.line([P(ax, 0.8 * h, z), P(ax + sgn * 0.04 + swing, 0.47 * h, z)], S.px(0.09, z),
               PEDESTRIAN, S.jit(top, 6), inst)
    hr = 0.11 * h / 1.75
    a, b = P(X - hr, 0.935 * h - hr * 1.2, z), P(X + hr, 0.935 * h + hr * 1.2, z)
    S.ellipse((a[0], a[1], b[0], b[1]), PEDESTRIAN, S.jit(_pick(rng, _SKIN), 8), inst)
    if rng.random() < 0.2:  # bag
        bx = X + _pick(rng, [-1, 1]) * sw * 0.55
        S.poly(S.quad_z(bx - 0.12, bx + 0.12, 0.45 * h, 0.62 * h, z), PEDESTRIAN,
               S.jit(_pick(rng, _CLOTHES), 10), inst)
    S.void_outline(torso)


def _bicyclist(S: _Scene, X: float, z: float) -> None:
    rng = S.rng
    inst = S.new_instance(BICYCLIST)
    P = S.P
    top = _pick(rng, _CLOTHES)
    frame = S.jit(_pick(rng, [(30, 30, 30), (180, 30, 30), (40, 60, 140), (200, 200, 200)]), 8)
    lw = S.px(0.05, z)
    if rng.random() < 0.65:  # seen from behind: a thin wheel below a narrow rider
        S.poly(S.quad_z(X - 0.03, X + 0.03, 0.0, 0.7, z), BICYCLIST, (25, 25, 25), inst)
        S.line([P(X - 0.28, 1.0, z), P(X + 0.28, 1.0, z)], lw, BICYCLIST, frame, inst)
        for sgn in (-1, 1):
            S.line([P(X + sgn * 0.1, 0.95, z), P(X + sgn * 0.12, rng.uniform(0.25, 0.5), z)],
                   S.px(0.11, z), BICYCLIST, S.jit(_pick(rng, _CLOTHES), 6), inst)
        torso = [P(X - 0.2, 1.5, z), P(X + 0.2, 1.5, z), P(X + 0.15, 0.95, z),
                 P(X - 0.15, 0.95, z)]
        head_x = X
    else:  # crossing: side view with two wheels
        d = _pick(rng, [-1, 1])
        wr = 0.34
        for wx in (X - 0.55, X + 0.55):
            a, b = P(wx - wr, 0.0, z), P(wx + wr, 2 * wr, z)
            S.ellipse((a[0], a[1], b[0], b[1]), BICYCLIST, (25, 25, 25), inst,
                      width=max(1, int(round(S.px(0.06, z)))))
        S.line([P(X - 0.55, wr, z), P(X, wr, z), P(X + 0.45 * d, 0.95, z), P(X - 0.1 * d, 0.95, z),
                P(X, wr, z)], lw, BICYCLIST, frame, inst)
        S.line([P(X - 0.05 * d, 1.0, z), P(X + 0.15 * d, 0.5, z), P(X + 0.1 * d, 0.25, z)],
               S.px(0.11, z), BICYCLIST, S.jit(_pick(rng, _CLOTHES), 6), inst)
        torso = [P(X - 0.2 * d, 1.0, z), P(X, 1.05, z), P(X + 0.25 * d, 1.5, z),
                 P(X + 0.05 * d, 1.55, z)]
        head_x = X + 0.18 * d
    S.poly(torso, BICYCLIST, S.jit(top, 6), inst)
    hr = S.px(0.12, z)
    cx, hy = S.P(head_x, 1.7, z)
    S.ellipse((cx - hr, hy - hr * 1.2, cx + hr, hy + hr * 1.2), BICYCLIST,
              S.jit(_pick(rng, [(200, 40, 40), (240, 240, 240), (30, 30, 30)] + _SKIN), 8), inst)


def _clutter(S: _Scene, X: float, z: float) -> None:
    """Unlabelled objects (bins, boxes, bollards, benches): CamVid marks such things void."""
    rng = S.rng
    w = rng.uniform(0.3, 2.0)
    h = rng.uniform(0.4, 1.6)
    col = S.jit(_pick(rng, _CAR_COLORS + _BUILDING_COLORS), 15)
    if rng.random() < 0.5:
        S.poly(S.quad_z(X - w / 2, X + w / 2, 0, h, z), VOID, col)
    else:
        P = S.P
        S.poly(_hull([P(x, y, zz) for x in (X - w / 2, X + w / 2) for y in (0, h)
                      for zz in (z, z + w)]), VOID, col)


def _populate(S: _Scene, st: _Street) -> list[tuple[float, Callable[[], None]]]:
    """Objects with their depth; drawn far to near so nearer ones occlude."""
    rng = S.rng
    objs: list[tuple[float, Callable[[], None]]] = []

    def add(z: float, fn: Callable[..., None], *args: Any) -> None:
        objs.append((z, lambda: fn(S, *args)))

    def depth(lo: float, hi: float) -> float:  # log-uniform: distant objects are more frequent
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    for side in (-1, 1):
        curb = st.xl if side < 0 else st.xr
        outer = st.outer(side)
        pav_mid = (curb + (st.xl - st.pl if side < 0 else st.xr + st.pr)) / 2
        # trees: an avenue (regular) or scattered
        if rng.random() < 0.4:
            zt, step = rng.uniform(3, 12), rng.uniform(8, 18)
            xt = outer - side * rng.uniform(0.3, 1.0)
            while zt < 120:
                add(zt, _tree, xt + rng.normal(0, 0.2), zt)
                zt += step * rng.uniform(0.8, 1.2)
        for _ in range(int(rng.poisson(2.5))):
            zt = depth(4, 150)
            add(zt, _tree, outer + side * rng.uniform(-1.0, 6.0), zt)
        # street lamps at regular spacing, other poles at random
        if rng.random() < 0.7:
            zl, step = rng.uniform(3, 15), rng.uniform(15, 35)
            while zl < 150:
                add(zl, _pole, curb + side * 0.4, zl, side, "lamp")
                zl += step
        for _ in range(int(rng.poisson(2.5))):
            zp = depth(3.5, 80)
            add(zp, _pole, curb + side * rng.uniform(0.3, 1.0), zp, side,
                _pick(rng, ["sign", "sign", "light"]))
        # fences / railings along the pavement's outer edge or the curb
        if rng.random() < 0.65:
            z0 = rng.uniform(2, 40)
            fx = (outer - side * 0.1) if rng.random() < 0.6 else curb + side * 0.15
            add(z0, _fence, fx, z0, z0 + rng.uniform(5, 60))
        for _ in range(int(rng.poisson(3.0))):
            zp = depth(3, 70)
            add(zp, _pedestrian, rng.uniform(min(curb, pav_mid * 2 - curb), max(curb, pav_mid * 2 - curb)), zp)
        for _ in range(int(rng.poisson(2.5))):
            zc = depth(3, 60)
            add(zc, _clutter, curb + side * rng.uniform(0.3, 0.9) * abs(pav_mid - curb) * 2, zc)
        # parked cars along the curb
        if rng.random() < 0.4:
            zc, step = rng.uniform(3, 20), rng.uniform(5.0, 8.0)
            for _ in range(int(rng.integers(1, 7))):
                if rng.random() < 0.8:
                    add(zc, _car, curb - side * 1.1, zc)
                zc += step
    # moving traffic in the lanes
    for _ in range(int(rng.poisson(2.5))):
        zc = depth(4, 120)
        add(zc, _car, rng.uniform(st.xl + 1.0, st.xr - 1.0), zc)
    for _ in range(int(rng.poisson(0.8))):
        zp = depth(4, 50)
        add(zp, _pedestrian, rng.uniform(st.xl, st.xr), zp)  # crossing
    for _ in range(int(rng.poisson(1.6))):
        zb = depth(4, 45)
        side = _pick(rng, [-1, 1])
        add(zb, _bicyclist, (st.xl + 0.8) if side < 0 else (st.xr - 0.8), zb)
    objs.sort(key=lambda o: -o[0])
    return objs


# --------------------------------------------------------------------------------------------
# from id canvases to pixels
# --------------------------------------------------------------------------------------------

_JOINT_SHADE = 0.78        # paving joints (grout) darken the stone
_MARKING_RANGE = 90.0      # metres: lane markings fade out beyond this (the crosswalk is nearer)
_WINDOW_LEVELS = 256       # brightness levels of a window, from a hash of its cell
_TONE_PAD = 256            # colour values below 0 / above 255 the camera response LUT clips
_RAMP = np.arange(256) / 255.0
_PADDED = np.clip(np.arange(256 + 2 * _TONE_PAD) - _TONE_PAD, 0, 255)  # LUT entry per index


class _Palette:
    """Where colours sit in the per-image colour table that colour indices point into.

    ``block`` rows: one per primitive id, then the lane-marking and curb colours. The block is
    repeated with each ground shading (none, paving joint, building shadow, both), so shading a
    ground pixel is adding ``joint`` / ``shadow`` to its index; then ``_WINDOW_LEVELS`` rows per
    facade surface. Per-pixel colour edits are thus integer writes into one HxW index map, and
    one table lookup per channel at the end replaces float RGB arithmetic on the whole frame.
    """

    def __init__(self, S: _Scene) -> None:
        n = len(S.labels)
        self.marking, self.curb = n, n + 1
        self.block = n + 2
        self.joint, self.shadow = self.block, 2 * self.block  # index offsets of the shadings
        self.windows = 4 * self.block

    def table(self, S: _Scene, lanes: dict[str, Any], shadow_k: float) -> np.ndarray:
        """(3, rows) int16 colour table, channel-planar for the per-channel lookups."""
        base = np.empty((self.block, 3), dtype=np.float32)
        # primitives: clamped and truncated as 8-bit drawing colours
        base[:self.marking] = np.floor(np.clip(np.array(S.colours, dtype=np.float32), 0, 255))
        base[self.marking] = lanes["marking"]
        base[self.curb] = lanes["curb"]
        shade = np.array([1.0, _JOINT_SHADE, shadow_k, _JOINT_SHADE * shadow_k], np.float32)
        ground = (shade[:, None, None] * base[None]).reshape(-1, 3)
        glass = np.array(S.glass, dtype=np.float32)
        bright = 0.6 + np.arange(_WINDOW_LEVELS, dtype=np.float32) * np.float32(0.9 / 255.0)
        windows = (glass[:, None, :] * bright[None, :, None]).reshape(-1, 3)
        return np.rint(np.concatenate([ground, windows]).T).astype(np.int16)


def _compose(S: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, from the id canvases: colour index (intp, ready for lookups), raw label
    (uint8), visible instance id (int32, 0 where no thing shows) and the id of the shape on
    top (int32)."""
    solid = np.asarray(S.solid)
    # paint on top of the shape below it
    cidx = np.maximum(solid, np.asarray(S.coat), dtype=np.intp)
    top = np.maximum(solid, np.asarray(S.border)) if S.has_border else solid
    # label in the low byte, instance id above it: one lookup for both (outlines: void, 0)
    code = np.asarray(S.inst_of, dtype=np.int32) << 8
    code |= np.asarray(S.labels, dtype=np.int32)
    code = code.take(top)
    return cidx, code.astype(np.uint8), code >> 8, solid


def _camera_grid(S: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Un-rolled (camera-frame) coordinates u, v of every pixel centre, float32 HxW.

    Rolling the camera rotates the image about its centre, so u and v are each a sum of a
    per-column and a per-row term: two broadcast additions for the whole frame.
    """
    dx = np.arange(S.w, dtype=np.float32) + np.float32(0.5 - S.cx)
    dy = np.arange(S.h, dtype=np.float32) + np.float32(0.5 - S.cy)
    u = (np.float32(S.cx) + np.float32(S.cr) * dx)[None, :] + (np.float32(S.sr) * dy)[:, None]
    v = (np.float32(S.cy) - np.float32(S.sr) * dx)[None, :] + (np.float32(S.cr) * dy)[:, None]
    return u, v


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _surface_pass(S: _Scene, lab: np.ndarray, solid: np.ndarray, cidx: np.ndarray,
                  grid: tuple[np.ndarray, np.ndarray], pal: _Palette) -> None:
    """Windows on facades, computed per pixel on the facade plane (perspective-correct).

    Drawing each window as a polygon would cost ~1000 draws per image; solving for the facade
    coordinates of every facade pixel is a handful of vector operations and gives correct
    foreshortening and aliasing for free.
    """
    if len(S.surfaces) <= 1:
        return
    idx = np.flatnonzero(lab.ravel() == BUILDING)  # facade pixels not hidden by anything else
    sv = np.asarray(S.surface_of, dtype=np.intp).take(solid.ravel().take(idx))
    on_facade = sv != 0
    idx, sv = idx[on_facade], sv[on_facade]
    if not len(idx):
        return
    params = np.array(S.surfaces, dtype=np.float32).T
    orient, plane, spacing, wratio, floor_h, hratio, ground_h, offset, top = params
    side = (orient == 0).take(sv)
    plane = plane.take(sv)
    u, v = grid[0].ravel().take(idx), grid[1].ravel().take(idx)
    du = u - np.float32(S.xv)
    du[np.abs(du) < 1e-3] = 1e-3
    z = np.where(side, np.float32(S.f) * plane / du, plane)
    along = np.where(side, z, du * z / np.float32(S.f))
    y = np.float32(S.hc) - (v - np.float32(S.yh)) * z / np.float32(S.f)
    col_f = (along + offset.take(sv)) / spacing.take(sv)
    row_f = y / floor_h.take(sv)
    win = (_frac(col_f) < wratio.take(sv)) & (_frac(row_f) < hratio.take(sv))
    win &= (y > ground_h.take(sv)) & (y < (top - 0.8).take(sv)) & (z > 0)
    if not win.any():
        return
    # per-window brightness from a hash of its (column, floor) cell: lit / dark / curtains
    cell = (np.floor(col_f[win]).astype(np.int64) * 73856093
            ^ np.floor(row_f[win]).astype(np.int64) * 19349663) & (_WINDOW_LEVELS - 1)
    cidx.ravel()[idx[win]] = pal.windows + sv[win] * _WINDOW_LEVELS + cell


def _ground_pass(S: _Scene, lab: np.ndarray, cidx: np.ndarray,
                 grid: tuple[np.ndarray, np.ndarray], st: _Street, lanes: dict[str, Any],
                 sunny: bool, pal: _Palette) -> None:
    """Lane markings, crosswalks, paving tiles, curbs and building shadows on the ground plane.

    Like the windows, these are evaluated per pixel from the pixel's ground-plane position
    (X, z), so markings shrink and alias with distance exactly as in a real camera. (X, z) is
    computed densely for the rows below the (rolled) horizon; markings and paving only on the
    road and pavement pixels they can touch.
    """
    r0 = int(max(0.0, math.floor(min(S.rot(0, S.yh)[1], S.rot(S.w, S.yh)[1]))))
    if r0 >= S.h:
        return
    # flat views of the rows below the horizon (cidx rows are contiguous, so ci writes through)
    lab, ci = lab[r0:].ravel(), cidx[r0:].ravel()
    dv = grid[1][r0:].ravel() - np.float32(S.yh)
    seen = dv > 0.5  # strictly below the horizon
    np.maximum(dv, np.float32(0.5), out=dv)
    z = np.float32(S.f * S.hc) / dv
    X = (grid[0][r0:].ravel() - np.float32(S.xv)) * (z / np.float32(S.f))
    road = np.flatnonzero(seen & (lab == ROAD) & (z < _MARKING_RANGE))
    mark = _lane_marks(z.take(road), X.take(road), st, lanes)
    ci[road[mark]] = pal.marking
    pav = np.flatnonzero(seen & (lab == PAVEMENT))
    zp, Xp = z.take(pav), X.take(pav)
    t = np.float32(lanes["tile"])
    joint = (_frac(zp / t) < 0.07) | (_frac((Xp + np.float32(100.0)) / t) < 0.07)
    ci[pav[joint]] += pal.joint
    curb = (np.abs(Xp - np.float32(st.xl)) < 0.15) | (np.abs(Xp - np.float32(st.xr)) < 0.15)
    ci[pav[curb]] = pal.curb
    if sunny:
        zb = np.minimum((z * 2.0).astype(np.intp), st.zbins - 1)
        shadowed = (X < st.shadow_l.take(zb)) | (X > st.shadow_r.take(zb))
        shadowed &= seen
        shadowed &= _IS_GROUND.take(lab)
        ci[shadowed] += pal.shadow


def _lane_marks(z: np.ndarray, X: np.ndarray, st: _Street, lanes: dict[str, Any]) -> np.ndarray:
    """Dashed dividers, optional solid edge lines and a crosswalk (painted, still Road), for
    road pixels nearer than _MARKING_RANGE."""
    mark = np.zeros(z.shape, dtype=bool)
    if lanes["dividers"]:
        period, duty = lanes["dash"]
        t = (X - np.float32(st.xl)) / np.float32(lanes["lane_width"])
        k = np.rint(t)
        on_divider = (np.abs(t - k) * np.float32(lanes["lane_width"]) < 0.07)
        on_divider &= (k >= 1) & (k < lanes["lanes"])
        mark |= on_divider & (_frac(z / np.float32(period)) < duty)
    if lanes["edge_lines"]:
        mark |= (np.abs(X - np.float32(st.xl + 0.3)) < 0.06)
        mark |= (np.abs(X - np.float32(st.xr - 0.3)) < 0.06)
    if lanes["crosswalk"] is not None:
        zc = lanes["crosswalk"]
        mark |= (z > zc) & (z < zc + 3.0) & (_frac(X + np.float32(100.0)) < 0.5)
    return mark


def _luminance(rng: _Rng, banks: dict[str, np.ndarray], lab: np.ndarray) -> np.ndarray:
    """Per-pixel luminance offset (texture plus an illumination gradient) as int16, plus
    _TONE_PAD so that the cast rounds.

    Texture comes from randomly offset crops of the shared noise banks, scaled per label.
    """
    h, w = lab.shape
    oy, ox = (int(v) for v in rng.integers(0, _BANK_PAD, 2))
    amp = _TEX * np.float32(rng.uniform(0.6, 1.4))
    labi = lab.astype(np.intp)
    tex = amp[0].take(labi)
    tex *= banks["fine"][oy:oy + h, ox:ox + w]
    blotch = amp[1].take(labi)
    blotch *= banks["blotch"][oy:oy + h, ox:ox + w]
    tex += blotch
    # smooth illumination gradient across the frame; the +0.5 makes the int cast round
    gy = rng.uniform(-25, 25) * (np.arange(h, dtype=np.float32) / h - 0.5) + (_TONE_PAD + 0.5)
    gx = rng.uniform(-25, 25) * (np.arange(w, dtype=np.float32) / w - 0.5)
    tex += gy.astype(np.float32)[:, None]
    tex += gx.astype(np.float32)[None, :]
    return tex.astype(np.int16)  # positive, so truncation is floor


def _camera_response(rng: _Rng, sunny: bool) -> np.ndarray:
    """Exposure, contrast, gamma and white-balance cast as one 8-bit lookup table per channel,
    padded by _TONE_PAD on both sides so the lookup also clips."""
    exposure = float(np.exp(rng.normal(0.0, 0.22)))
    contrast = rng.uniform(0.72, 1.15) if sunny else rng.uniform(0.65, 1.0)
    gamma = float(np.exp(rng.normal(0.0, 0.12)))
    warm = rng.uniform(-0.08, 0.1)
    cast = np.array([1 + warm, 1.0, 1 - warm]) * (1 + rng.normal(0, 0.03, 3))
    v = 255.0 * _RAMP ** gamma
    curve = ((v[None, :] - 128.0) * contrast + 128.0) * exposure * cast[:, None]
    lut = np.clip(np.rint(curve), 0, 255).astype(np.uint8)
    return lut[:, _PADDED]


def _develop(S: _Scene, cidx: np.ndarray, table: np.ndarray, lum: np.ndarray,
             sensor: np.ndarray, sunny: bool) -> list[np.ndarray]:
    """Colour lookup, luminance, sensor noise and camera response: R, G, B uint8 planes.

    Integer (int16) planes and lookups instead of float RGB: the per-channel planes are
    contiguous, and the camera response LUT (with _TONE_PAD) does the clipping.
    """
    rng, h, w = S.rng, S.h, S.w
    sigma = rng.uniform(1.5, 8.0)
    sy, sx = (int(v) for v in rng.integers(0, _BANK_PAD, 2))
    # the bank holds N(0, 1) * _SENSOR_SCALE; (n * s + 128) >> 8 is n * sigma, rounded, and
    # n * s stays within int16 for |N(0, 1)| < 16
    s = np.int16(round(sigma * 256 / _SENSOR_SCALE))
    lut = _camera_response(rng, sunny)
    planes = []
    for c in range(3):
        px = np.multiply(sensor[c, sy:sy + h, sx:sx + w], s)
        px += np.int16(128)
        px >>= 8
        px += lum
        px += table[c].take(cidx)
        planes.append(lut[c].take(px, mode="clip"))
    return planes


def _box_blur(plane: np.ndarray, radius: float) -> np.ndarray:
    """Box blur of a uint8 plane with a fractional radius (as PIL's BoxBlur: a box of
    2 * radius + 1 pixels whose two end pixels count by the fraction, edges extended).

    Separable, in float32 on contiguous rows and columns: about half the time PIL takes on
    an RGB image (its vertical pass goes through two transposes), within 1 of PIL's result.
    """
    x = plane.astype(np.float32)
    for axis in (1, 0):
        x = _box_blur_1d(x, radius, axis)
    return np.rint(x).astype(np.uint8)


def _box_blur_1d(x: np.ndarray, radius: float, axis: int) -> np.ndarray:
    k = int(radius)
    n = x.shape[axis]
    ext = np.take(x, np.clip(np.arange(-k - 1, n + k + 1), 0, n - 1), axis=axis)

    def shifted(d: int) -> np.ndarray:  # x[i + d] for every i, from the edge-extended copy
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(k + 1 + d, k + 1 + d + n)
        return ext[tuple(sl)]

    out = shifted(-k - 1) + shifted(k + 1)
    out *= np.float32(radius - k)
    for d in range(-k, k + 1):
        out += shifted(d)
    out *= np.float32(1.0 / (2 * radius + 1))
    return out


def generate_sample(seed: int, split: str, index: int,
                    size: tuple[int, int] = DEFAULT_SIZE) -> dict[str, Any]:
    """Render one image: {"image", "label" (raw, void = 11), "instances" (uint16), "boxes"}.

    Deterministic in (seed, split, index, size) alone.
    """
    if split not in SPLIT_INDEX:
        raise DataError(f"unknown synthetic split {split!r}; valid splits: {', '.join(SPLITS)}")
    h, w = int(size[0]), int(size[1])
    rng = _Rng(np.random.default_rng([int(seed), SPLIT_INDEX[split], int(index)]))
    S = _Scene(rng, h, w)
    sunny, st, lanes = _draw_scene(S)
    cidx, lab, ins, solid = _compose(S)
    pal = _Palette(S)
    grid = _camera_grid(S)
    _surface_pass(S, lab, solid, cidx, grid, pal)
    _ground_pass(S, lab, cidx, grid, st, lanes, sunny, pal)
    table = pal.table(S, lanes, rng.uniform(0.45, 0.7))
    banks = _banks(seed, h, w)
    lum = _luminance(rng, banks, lab)
    image = _optics_and_codec(rng, _develop(S, cidx, table, lum, banks["sensor"], sunny))
    instances, boxes = _finish_instances(S, ins)
    return {"image": image, "label": lab, "instances": instances, "boxes": boxes}


def _draw_scene(S: _Scene) -> tuple[bool, _Street, dict[str, Any]]:
    """Draw sky, street, buildings and objects (far to near) into the id canvases."""
    rng, h, w = S.rng, S.h, S.w
    sunny = rng.random() < 0.55
    sun_side = _pick(rng, [-1, 1])
    sky = _draw_sky(S)
    _draw_far_background(S, sky)
    st = _Street(rng)
    lanes = _draw_ground(S, st)
    _draw_buildings(S, st, sunny, sun_side)
    for _, draw in _populate(S, st):
        draw()
    if rng.random() < 0.2:  # ego-vehicle hood / dashboard at the bottom: unlabelled
        hh = rng.uniform(0.03, 0.09) * h
        pts = [(-1, h + 1), (w + 1, h + 1), (w + 1, h - hh * 0.6), (w * 0.7, h - hh),
               (w * 0.3, h - hh), (-1, h - hh * 0.6)]
        S.poly(pts, VOID, S.jit((40, 40, 45), 10))
    return sunny, st, lanes


def _optics_and_codec(rng: _Rng, planes: list[np.ndarray]) -> np.ndarray:
    """Optional defocus / motion blur, then optional JPEG artefacts: the HxWx3 uint8 image."""
    if rng.random() < 0.3:  # defocus / motion blur
        radius = rng.uniform(0.5, 1.5)
        planes = [_box_blur(p, radius) for p in planes]
    out = Image.merge("RGB", [Image.fromarray(p) for p in planes])
    if rng.random() < 0.5:  # compression artefacts
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=int(rng.integers(25, 80)))
        buf.seek(0)
        out = Image.open(buf)
    return np.ascontiguousarray(np.asarray(out))  # decodes a JPEG; RGB in, RGB out


def _finish_instances(S: _Scene, ins: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Renumber the visible instances 1..K (uint16 map) and box them from their visible pixels.

    ``ins`` holds the instance of the shape on top of each pixel, so a thing hidden behind
    stuff (a tree, a fence) or under a void outline has no pixel there, and instances with no
    visible pixel left disappear.
    """
    h, w = ins.shape
    flat = ins.ravel()
    nz = np.flatnonzero(flat != 0)  # a bool mask takes numpy's fast nonzero path
    if not len(nz):
        return np.zeros((h, w), np.uint16), []
    cls_of = np.asarray(S.instances, dtype=np.int64)
    ids = flat[nz]
    present = np.flatnonzero(np.bincount(ids, minlength=len(cls_of)))
    remap = np.zeros(len(cls_of), dtype=np.uint16)
    remap[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
    k = remap[ids]
    ys, xs = np.divmod(nz, w)
    rows = np.zeros((len(present) + 1, h), dtype=bool)
    cols = np.zeros((len(present) + 1, w), dtype=bool)
    rows[k, ys] = True
    cols[k, xs] = True
    # tight boxes, x1 / y1 exclusive: first and last occupied row and column per instance
    y0, y1 = _first_last(rows[1:])
    x0, x1 = _first_last(cols[1:])
    corners = zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist())
    boxes = [{"class": cls, "instance": j, "bbox": list(box)}
             for j, (cls, box) in enumerate(zip(cls_of[present].tolist(), corners), 1)]
    out = np.zeros(h * w, dtype=np.uint16)
    out[nz] = k
    return out.reshape(h, w), boxes


def _first_last(occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a bool matrix: the first True index and one past the last (rows not empty)."""
    n = occupied.shape[1]
    return occupied.argmax(axis=1), n - np.ascontiguousarray(occupied[:, ::-1]).argmax(axis=1)
