"""From network outputs to instances: centre NMS and nearest-centre grouping (Panoptic-DeepLab).

numpy/scipy only, so the same code scores PyTorch, ONNX Runtime and TensorRT outputs.

1. Centres: pixels of the centre heat map that equal the maximum of their `nms_kernel` window
   (max-pool keypoint NMS) and exceed `threshold`, best `top_k` kept (Panoptic-DeepLab: 0.1, 7,
   200; detectron2 `post_processing.py::find_instance_center`).
2. Grouping: every thing pixel votes for the location pixel + offset and joins the centre nearest
   to its vote (`group_pixels`; class-agnostic, as in Panoptic-DeepLab).
3. Instances are then (connected component of a thing class) x (centre) pairs: pixels of one
   component that chose the same centre form one instance, and a component that no centre reached
   stays whole. Panoptic-DeepLab lets one centre collect pixels anywhere in the image; cutting by
   components means the learned part can only *split* what connected components would merge, so
   small far-away objects whose centres were missed are not glued to a distant centre, and every
   instance has exactly one class (no majority vote needed).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from zoo.instances.pseudo import connected_components


@dataclass(frozen=True)
class GroupConfig:
    """Post-processing settings. `sigma` in `zoo.instances.train` is 3 px at 360x480, so the
    NMS window (5) keeps centres >= 3 px apart, the spacing of touching people in those scenes."""

    threshold: float = 0.1
    nms_kernel: int = 5
    top_k: int = 200
    min_fragment: int = 0    # component pieces smaller than this (px) join their largest sibling

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_centres(heat: np.ndarray, *, threshold: float = 0.1, nms_kernel: int = 5,
                 top_k: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint NMS on a (H, W) heat map: ((K, 2) int (y, x) centres, (K,) scores), best first."""
    heat = np.asarray(heat, dtype=np.float32)
    pooled = ndi.maximum_filter(heat, size=nms_kernel, mode="constant", cval=-np.inf)
    keep = (heat == pooled) & (heat > threshold)
    ys, xs = np.nonzero(keep)
    scores = heat[ys, xs]
    order = np.argsort(-scores, kind="stable")[:top_k]
    return np.stack([ys[order], xs[order]], 1).astype(np.int64), scores[order]


def group_pixels(thing: np.ndarray, offset: np.ndarray, centres: np.ndarray, *,
                 chunk: int = 65536) -> np.ndarray:
    """Index (1..K) of the centre nearest to each thing pixel's vote (pixel + offset); 0 elsewhere
    and everywhere when there is no centre. `offset` is (2, H, W) (dy, dx)."""
    labels = np.zeros(thing.shape, np.int32)
    if len(centres) == 0:
        return labels
    ys, xs = np.nonzero(thing)
    vy = ys + offset[0][ys, xs]
    vx = xs + offset[1][ys, xs]
    c = np.asarray(centres, dtype=np.float32)
    out = np.empty(len(ys), np.int32)
    for s in range(0, len(ys), chunk):  # bounded memory: chunk x K distances at a time
        d = (vy[s:s + chunk, None] - c[None, :, 0]) ** 2 + (vx[s:s + chunk, None] - c[None, :, 1]) ** 2
        out[s:s + chunk] = d.argmin(1) + 1
    labels[ys, xs] = out
    return labels


def _relabel(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive ids 1..K for the distinct nonzero keys; also the key of each new id."""
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(key.shape).astype(np.int32)
    if uniq[0] == 0:
        return inv, uniq
    return inv + 1, np.concatenate([[0], uniq])


def _merge_fragments(ids: np.ndarray, comp: np.ndarray, min_fragment: int) -> np.ndarray:
    area = np.bincount(ids.ravel())
    comp_of = np.zeros(len(area), np.int64)
    comp_of[ids.ravel()] = comp.ravel()
    ids = ids.copy()
    for k in np.flatnonzero((area > 0) & (area < min_fragment)):
        if k == 0:
            continue
        siblings = np.flatnonzero((comp_of == comp_of[k]) & (area >= min_fragment))
        if len(siblings):
            ids[ids == k] = siblings[np.argmax(area[siblings])]
    return _relabel(ids)[0]


def panoptic_instances(semantic: np.ndarray, heat: np.ndarray, offset: np.ndarray,
                       thing_classes: Sequence[int], cfg: GroupConfig | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances from a semantic label map (H, W), centre heat (H, W) and offsets (2, H, W).

    Returns (ids int32 (H, W), class of each id, centre score of each id: the highest heat on the
    instance's pixels, clipped to [0, 1]); index 0 of the per-id arrays is unused.
    """
    cfg = cfg or GroupConfig()
    comp, comp_cls = connected_components(semantic, thing_classes)
    centres, _ = find_centres(heat, threshold=cfg.threshold, nms_kernel=cfg.nms_kernel, top_k=cfg.top_k)
    nearest = group_pixels(comp > 0, offset, centres)
    key = np.where(comp > 0, comp.astype(np.int64) * (len(centres) + 1) + nearest, 0)
    ids, keys = _relabel(key)
    if cfg.min_fragment > 0:
        ids = _merge_fragments(ids, comp, cfg.min_fragment)
        keys = np.zeros(int(ids.max()) + 1, np.int64)
        keys[ids.ravel()] = key.ravel()
    classes = np.full(len(keys), -1, np.int64)
    classes[1:] = comp_cls[keys[1:] // (len(centres) + 1)]
    n = len(keys)
    score = np.zeros(n, np.float32)
    if n > 1:
        score[1:] = np.clip(ndi.maximum(heat, ids, index=np.arange(1, n)), 0.0, 1.0)
    return ids, classes, score


def decode_output(out: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw network output (C + 3, H, W), from any backend, -> (class probabilities
    (C, H, W), centre heat (H, W), offsets (2, H, W)); see `zoo.instances.net` for the layout."""
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 3 or out.shape[0] != num_classes + 3:
        raise ValueError(f"expected a ({num_classes + 3}, H, W) output, got {out.shape}")
    logits = out[:num_classes]
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True), out[num_classes], out[num_classes + 1:]


def mean_class_probability(probs: np.ndarray, ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mean softmax probability of each instance's class over its pixels (index 0: 0). The
    instance score of all three methods for COCO AP (the learned one times its centre score)."""
    n = len(classes)
    out = np.zeros(n, np.float32)
    flat = ids.ravel()
    area = np.bincount(flat, minlength=n)
    for c in np.unique(classes[1:]):
        sel = np.flatnonzero(classes == c)
        sums = np.bincount(flat, weights=probs[c].ravel(), minlength=n)
        out[sel] = sums[sel] / np.maximum(area[sel], 1)
    return out
