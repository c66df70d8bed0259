"""Pseudo-instances from semantic labels: connected components, a "clean component" filter, and
copy-paste of clean instances into touching clusters whose instance ids are exact.

Only semantic masks go in: this is how `zoo.instances.train` makes instance targets without any
instance label (issue #10). The route follows ../shared/docs/LOSSES_INSTANCES_VIDEO.md §2:

1. per thing class, 8-connected components of the semantic mask are pseudo-instances;
2. a component is *clean* (probably one object) when its area is in range, its solidity
   (area / convex area) is high and its distance transform has a single significant peak
   (`dt_peaks`); the others may be several touching objects, and training gives them zero
   weight in the centre and offset losses (Panoptic-DeepLab's ignore masks);
3. clean instances pasted next to each other (Simple Copy-Paste, Ghiasi et al., CVPR 2021) make
   touching clusters whose ids are exact, the case that connected components cannot split.

Conventions: instance maps are int32 (H, W) with 0 = no instance; per-id arrays (`classes`,
`clean`) have index 0 unused. Coordinates are (y, x) pixel centres.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

EIGHT = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------------------------
# connected components and the clean filter
# ---------------------------------------------------------------------------------------------

@dataclass
class Instances:
    """An instance map with per-id class and cleanliness (index 0 unused)."""

    ids: np.ndarray                  # int32 (H, W), 0 = none
    classes: np.ndarray              # int64 (K + 1,), classes[0] = -1
    clean: np.ndarray                # bool (K + 1,), clean[0] = False
    reasons: list[str] = field(default_factory=list)  # why each id is (not) clean; [0] = ""

    @property
    def count(self) -> int:
        return len(self.classes) - 1


def connected_components(semantic: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of each class in `classes`: (ids int32 (H, W), class of each id)."""
    ids = np.zeros(semantic.shape, np.int32)
    cls_of = [-1]
    for c in classes:
        lab, n = ndi.label(semantic == c, structure=EIGHT)
        if n:
            ids[lab > 0] = lab[lab > 0] + len(cls_of) - 1
            cls_of.extend([int(c)] * n)
    return ids, np.asarray(cls_of, dtype=np.int64)


def solidity(mask: np.ndarray) -> float:
    """Pixel area / area of the digital convex hull (pixels whose centres lie in the hull of the
    mask's pixel centres). 1 for convex shapes, straight lines and single pixels."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return 1.0
    edge = mask & ~ndi.binary_erosion(mask, EIGHT, border_value=0)  # the hull only needs the rim
    ey, ex = np.nonzero(edge)
    pts = np.stack([ex, ey], 1).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear: a straight line is convex
        return 1.0
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    gy, gx = np.mgrid[y0:y1, x0:x1]
    p = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], 0)
    inside = (hull.equations @ p <= 1e-9).all(0)
    return float(len(ys) / max(int(inside.sum()), len(ys)))


def dt_peaks(mask: np.ndarray, *, h_abs: float = 1.0, h_rel: float = 0.2) -> list[tuple[int, int]]:
    """Significant maxima of the mask's Euclidean distance transform, one (y, x) per peak.

    A maximum is significant when its *dynamic* (how far the distance must drop on every path to
    a higher maximum) is at least max(h_abs, h_rel * highest distance) of its 8-connected
    component: the h-maxima criterion, which ignores the one-pixel ripples of a digitised ridge
    (an ellipse, a rotated bar) but keeps the two centres of a dumbbell. The highest maximum of
    each component is always kept. Computed exactly by merging pixels from the highest distance
    down (union-find), like a component tree.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return []
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    h, w = mask.shape
    lab, n = ndi.label(mask, structure=EIGHT)
    comp_max = ndi.maximum(dist, lab, index=np.arange(1, n + 1))
    thresh = np.maximum(h_abs, h_rel * np.asarray(comp_max, dtype=np.float64))
    flat = dist.ravel()
    order = np.flatnonzero(mask.ravel())
    order = order[np.argsort(-flat[order], kind="stable")]
    parent: dict[int, int] = {}
    peak: dict[int, int] = {}  # root -> flat index of its highest pixel
    found: list[int] = []

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    for p in order.tolist():
        y, x = divmod(p, w)
        roots = set()
        for dy in (-1, 0, 1):
            yy = y + dy
            if yy < 0 or yy >= h:
                continue
            for dx in (-1, 0, 1):
                xx = x + dx
                if (dy or dx) and 0 <= xx < w:
                    q = yy * w + xx
                    if q in parent:
                        roots.add(find(q))
        parent[p] = p
        if not roots:
            peak[p] = p
            continue
        best = max(roots, key=lambda r: flat[peak[r]])
        level = flat[p]
        th = thresh[lab.ravel()[p] - 1]
        for r in roots:
            if r != best:
                if flat[peak[r]] - level >= th:
                    found.append(peak[r])
                parent[r] = best
        parent[p] = best
    found.extend(peak[r] for r in {find(p) for p in peak})  # each component's highest peak
    return [divmod(int(p), w) for p in dict.fromkeys(found)]


@dataclass(frozen=True)
class CleanFilter:
    """Which connected components count as one clean object.

    Defaults are for street scenes at about 360x480: things of 20 px and more, at most a quarter
    of the image, solidity >= 0.8 (cars and signs pass; a C- or L-shaped blob of two objects does
    not), and a single distance-transform peak with dynamic >= max(1 px, 0.2 x its depth).
    """

    min_area: int = 20
    max_area_frac: float = 0.25
    min_solidity: float = 0.8
    peak_h_abs: float = 1.0
    peak_h_rel: float = 0.2

    def check(self, mask: np.ndarray, image_pixels: int | None = None) -> str:
        """'clean' or the first failed test: 'small', 'large', 'solidity', 'peaks'. `mask` may be
        a crop; `image_pixels` is then the size of the whole image (default: the mask's)."""
        area = int(mask.sum())
        if area < self.min_area:
            return "small"
        if area > self.max_area_frac * (image_pixels or mask.size):
            return "large"
        crop = _crop(mask)
        if solidity(crop) < self.min_solidity:
            return "solidity"
        if len(dt_peaks(crop, h_abs=self.peak_h_abs, h_rel=self.peak_h_rel)) != 1:
            return "peaks"
        return "clean"


def _crop(mask: np.ndarray, pad: int = 1) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.pad(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], pad)


def pseudo_instances(semantic: np.ndarray, thing_classes: Sequence[int],
                     filt: CleanFilter | None = None) -> Instances:
    """Connected components of the thing classes, each marked clean or not by `filt`."""
    filt = filt or CleanFilter()
    ids, cls_of = connected_components(semantic, thing_classes)
    clean = np.zeros(len(cls_of), bool)
    reasons = [""]
    objects = ndi.find_objects(ids)
    for k, sl in enumerate(objects, start=1):
        why = filt.check(ids[sl] == k, ids.size) if sl is not None else "small"
        clean[k] = why == "clean"
        reasons.append(why)
    return Instances(ids=ids, classes=cls_of, clean=clean, reasons=reasons)


# ---------------------------------------------------------------------------------------------
# Panoptic-DeepLab targets
# ---------------------------------------------------------------------------------------------

def instance_centres(ids: np.ndarray, count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (y, x) and pixel count of every id 0..count (index 0 and empty ids: NaN centre)."""
    n = (int(ids.max()) if count is None else count) + 1
    h, w = ids.shape
    flat = ids.ravel()
    area = np.bincount(flat, minlength=n)[:n].astype(np.float64)
    yy, xx = np.divmod(np.arange(h * w, dtype=np.float64), w)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=yy, minlength=n)[:n] / area
        cx = np.bincount(flat, weights=xx, minlength=n)[:n] / area
    cy[0] = cx[0] = np.nan
    return cy, cx, area


@dataclass
class Targets:
    """Per-pixel training targets (float32): centre heat (H, W), offsets (2, H, W) = centre -
    pixel (dy, dx), and the loss weights of both (0 where the target is unknown)."""

    heat: np.ndarray
    offset: np.ndarray
    heat_weight: np.ndarray
    offset_weight: np.ndarray


def make_targets(ids: np.ndarray, valid: np.ndarray, *, sigma: float = 4.0,
                 ignore: np.ndarray | None = None) -> Targets:
    """Panoptic-DeepLab targets for the ids with `valid[id]` True.

    Each valid instance contributes a Gaussian (peak 1, std `sigma`) at its mask mean, combined by
    maximum, and offsets pointing from its pixels to that mean. Invalid (unclean) ids and `ignore`
    pixels get zero heat weight: the network is told neither "centre here" nor "no centre here"
    on a blob that may hold several objects. Offsets are weighted on valid instance pixels only.
    """
    h, w = ids.shape
    valid = np.array(valid, bool)
    valid[0] = False  # id 0 is "no instance"
    cy, cx, area = instance_centres(ids, len(valid) - 1)
    heat = np.zeros((h, w), np.float32)
    r = int(np.ceil(3 * sigma))
    for k in np.flatnonzero(valid & (area > 0)):
        y, x = cy[k], cx[k]
        y0, y1 = max(0, int(np.floor(y)) - r), min(h, int(np.ceil(y)) + r + 1)
        x0, x1 = max(0, int(np.floor(x)) - r), min(w, int(np.ceil(x)) + r + 1)
        gy = np.exp(-((np.arange(y0, y1) - y) ** 2) / (2 * sigma ** 2))
        gx = np.exp(-((np.arange(x0, x1) - x) ** 2) / (2 * sigma ** 2))
        np.maximum(heat[y0:y1, x0:x1], (gy[:, None] * gx[None, :]).astype(np.float32),
                   out=heat[y0:y1, x0:x1])
    on = valid[ids] & (ids > 0)
    yy, xx = np.mgrid[0:h, 0:w]
    offset = np.zeros((2, h, w), np.float32)
    offset[0][on] = (cy[ids[on]] - yy[on]).astype(np.float32)
    offset[1][on] = (cx[ids[on]] - xx[on]).astype(np.float32)
    heat_weight = np.ones((h, w), np.float32)
    heat_weight[(ids > 0) & ~valid[ids]] = 0.0
    if ignore is not None:
        heat_weight[ignore] = 0.0
    return Targets(heat=heat, offset=offset, heat_weight=heat_weight, offset_weight=on.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# copy-paste of clean instances into touching clusters
# ---------------------------------------------------------------------------------------------

@dataclass
class Patch:
    """One clean instance cut out of a training image: RGB crop, its mask, its class."""

    image: np.ndarray   # uint8 (h, w, 3)
    mask: np.ndarray    # bool (h, w)
    cls: int


class InstanceBank:
    """Clean instances collected from training images, to paste into other images."""

    def __init__(self, min_area: int = 30) -> None:
        self.min_area = min_area
        self.by_class: dict[int, list[Patch]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_class.values())

    def add_image(self, image: np.ndarray, inst: Instances) -> None:
        """Add the clean instances of one image that do not touch its border (cut objects would
        be pasted with a straight edge)."""
        h, w = inst.ids.shape
        for k, sl in enumerate(ndi.find_objects(inst.ids), start=1):
            if sl is None or not inst.clean[k]:
                continue
            if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w:
                continue
            mask = inst.ids[sl] == k
            if mask.sum() < self.min_area:
                continue
            self.by_class.setdefault(int(inst.classes[k]), []).append(
                Patch(image=np.ascontiguousarray(image[sl]), mask=mask, cls=int(inst.classes[k])))

    def sample(self, cls: int, rng: np.random.Generator) -> Patch | None:
        pool = self.by_class.get(int(cls))
        return pool[int(rng.integers(len(pool)))] if pool else None


@dataclass(frozen=True)
class PasteConfig:
    """How often and how copy-paste builds touching clusters (per training image)."""

    prob: float = 0.7                 # chance that an image gets any pasted cluster
    max_clusters: int = 3             # clusters per image: 1..max_clusters
    max_neighbours: int = 3           # pasted instances per cluster: 1..max_neighbours
    scale_jitter: float = 0.15        # pasted height = anchor height * U(1 -/+ jitter)
    max_overlap: float = 0.3          # occlusion: overlap up to this fraction of the pasted width
    min_visible: float = 0.5          # a pasted instance must keep this share of its pixels
    min_height: int = 8               # smaller anchors are not used (their neighbours are specks)


def _resize_patch(p: Patch, height: int) -> Patch:
    h, w = p.mask.shape
    s = height / h
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = np.asarray(Image.fromarray(p.image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(p.mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    return Patch(image=img, mask=mask, cls=p.cls)


def touching_offset(anchor: np.ndarray, patch: np.ndarray, top: int, side: int) -> int | None:
    """Column of the patch's left edge that puts `patch` (rows from `top`) right beside
    `anchor`, on the left (`side` -1) or right (+1): no pixel overlaps and at least one row is
    4-adjacent. None when the two share no row."""
    ph, pw = patch.shape
    h, w = anchor.shape
    best = None
    for r in range(ph):
        y = top + r
        if not (0 <= y < h) or not patch[r].any():
            continue
        cols = np.flatnonzero(anchor[y])
        if not len(cols):
            continue
        pc = np.flatnonzero(patch[r])
        if side < 0:  # patch's rightmost pixel just left of the anchor's leftmost
            x = int(cols[0]) - 1 - int(pc[-1])
            best = x if best is None else min(best, x)
        else:
            x = int(cols[-1]) + 1 - int(pc[0])
            best = x if best is None else max(best, x)
    return best


def paste_touching(image: np.ndarray, semantic: np.ndarray, inst: Instances, bank: InstanceBank,
                   rng: np.random.Generator, cfg: PasteConfig | None = None
                   ) -> tuple[np.ndarray, np.ndarray, Instances]:
    """Paste clean bank instances so that each touches (or partly occludes, or hides behind) a
    clean instance of the same class, building clusters of 2..1+max_neighbours objects.

    Returns new (image, semantic, instances). Pasted instances get new ids and clean=True; every
    pixel keeps exactly one id, so the ids stay exact: an occluded instance just loses the
    covered pixels. Anchors are the image's clean instances; images without one get a random
    bank instance as the anchor of a cluster.
    """
    cfg = cfg or PasteConfig()
    if rng.random() >= cfg.prob or len(bank) == 0:
        return image, semantic, inst
    image, semantic = image.copy(), semantic.copy()
    ids = inst.ids.copy()
    classes, clean, reasons = list(inst.classes), list(inst.clean), list(inst.reasons)
    h, w = ids.shape

    def place(p: Patch, top: int, left: int, behind: bool) -> int | None:
        """Paste p with its top-left at (top, left); returns the new id or None if too hidden."""
        ph, pw = p.mask.shape
        y0, y1, x0, x1 = max(0, top), min(h, top + ph), max(0, left), min(w, left + pw)
        if y1 <= y0 or x1 <= x0:
            return None
        m = p.mask[y0 - top:y1 - top, x0 - left:x1 - left].copy()
        if behind:  # hidden by every instance already there
            m &= ids[y0:y1, x0:x1] == 0
        if m.sum() < cfg.min_visible * p.mask.sum():
            return None
        new = len(classes)
        image[y0:y1, x0:x1][m] = p.image[y0 - top:y1 - top, x0 - left:x1 - left][m]
        semantic[y0:y1, x0:x1][m] = p.cls
        ids[y0:y1, x0:x1][m] = new
        classes.append(p.cls)
        clean.append(True)
        reasons.append("pasted")
        return new

    anchors = [k for k in range(1, len(classes)) if clean[k] and inst.classes[k] in bank.by_class]
    for _ in range(int(rng.integers(1, cfg.max_clusters + 1))):
        if anchors:
            a = anchors.pop(int(rng.integers(len(anchors))))
        else:  # no clean anchor left: start a cluster with a bank instance at a random place
            cls = list(bank.by_class)[int(rng.integers(len(bank.by_class)))]
            p = bank.sample(cls, rng)
            ph, pw = p.mask.shape
            if ph >= h or pw >= w:
                continue
            a = place(p, int(rng.integers(h // 3, h - ph + 1)) if h - ph + 1 > h // 3 else 0,
                      int(rng.integers(0, w - pw + 1)), behind=False)
            if a is None:
                continue
        cluster = [a]
        for _ in range(int(rng.integers(1, cfg.max_neighbours + 1))):
            host = cluster[int(rng.integers(len(cluster)))]
            hmask = ids == host
            if not hmask.any():
                continue
            ys = np.flatnonzero(hmask.any(1))
            hh = int(ys[-1] - ys[0] + 1)
            if hh < cfg.min_height:
                continue
            p = bank.sample(int(classes[host]), rng)
            if p is None:
                continue
            p = _resize_patch(p, max(2, round(hh * rng.uniform(1 - cfg.scale_jitter, 1 + cfg.scale_jitter))))
            ph, pw = p.mask.shape
            # street objects stand on the ground: align bottoms, with a little jitter
            top = int(ys[-1]) + 1 - ph + int(round(rng.normal(0, 0.05 * hh)))
            side = -1 if rng.random() < 0.5 else 1
            left = touching_offset(hmask, p.mask, top, side)
            if left is None:
                continue
            overlap = int(round(rng.uniform(0, cfg.max_overlap) * pw)) if rng.random() < 0.5 else 0
            left -= side * overlap
            new = place(p, top, left, behind=overlap > 0 and rng.random() < 0.5)
            if new is not None:
                cluster.append(new)
    out = Instances(ids=ids, classes=np.asarray(classes, np.int64), clean=np.asarray(clean, bool),
                    reasons=reasons)
    return image, semantic, drop_empty(out)


def drop_empty(inst: Instances) -> Instances:
    """Mark ids that lost all their pixels (fully covered) as not clean, so they add no targets."""
    area = np.bincount(inst.ids.ravel(), minlength=len(inst.classes))
    clean = inst.clean & (area > 0)
    return replace(inst, clean=clean)
