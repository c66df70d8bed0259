"""From network outputs to instances: centre NMS and nearest-centre grouping (Panoptic-DeepLab).

numpy/scipy only, so the same code scores PyTorch, ONNX Runtime and TensorRT outputs.

1. Centres: pixels of the centre heat map that equal the maximum of their `nms_kernel` window
   (max-pool keypoint NMS) and exceed `threshold`, best `top_k` kept (Panoptic-DeepLab: 0.1, 7,
   200; detectron2 `post_processing.py::find_instance_center`; our defaults in `GroupConfig`).
2. Grouping, Panoptic-DeepLab's way (``split_components=False``): every thing pixel votes for
   the location pixel + offset and joins the centre nearest to its vote (`group_pixels`;
   class-agnostic, image-wide, the instance's class the majority of its pixels' classes:
   Panoptic-DeepLab's `group_pixels` + `merge_semantic_and_instance`). One deviation, for objects
   whose centre was missed: a pixel whose vote lands farther than `vote_radius` from every centre
   joins none, and such pixels form instances by connected components of their class
   (Panoptic-DeepLab assigns every pixel, which glues a small object with a missed centre to some
   distant one).
3. Grouping, the default (``split_components=True``, `min_votes` > 0,
   `split_by_confident_centres`): the connected components of each thing class are the
   instances, except that a component in which two or more centres each collect `min_votes`
   votes is split between those centres. Grouping can then only split what connected components
   merge. The cost, measured with centres and offsets made from true instances (synthetic val,
   30 images, true semantics, min_votes 0): an object cut in two by an occluder becomes two
   instances, PQ on touching instances 75 vs 97 image-wide. The gain, with learned heads, is far
   larger (`GroupConfig`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from zoo.instances.pseudo import connected_components


@dataclass(frozen=True)
class GroupConfig:
    """Post-processing settings.

    Defaults: centres above 0.2 that are the maximum of their 7x7 window, and a connected component
    of the semantic mask is split only between centres that each collect >= 50 of its pixels'
    votes (`split_components` + `min_votes`); tuned with `python -m zoo.instances.tune` on 30
    synthetic val images for two seed-0 models (session 11, NOTES.md). Against Panoptic-DeepLab's
    own settings (threshold 0.1, image-wide grouping; window 3 for our 3 px sigma) they raised PQ
    on touching objects from 4.36 / 5.10 to 6.55 / 6.41 with the predicted semantic mask and from
    12.2 / 15.0 to 43.9 / 36.1 with the true one: image-wide grouping over-splits isolated
    objects whenever the offsets are noisy. With centres and offsets made from the true instances,
    window 3 is better (PQ touching 99.4 vs 96.9 with 5: an occluder's and an occluded object's
    centres can be 2 px apart); the larger window suppresses the learned heat map's spurious peaks.
    The price of these defaults is a lower ceiling: with true centres and offsets they reach PQ
    69.4 all / 64.2 touching, image-wide grouping 99.8 (30 val images, true semantics). They fit
    today's heads; re-tune with `zoo.instances.tune` for a better-trained model.

    `vote_radius` (image-wide grouping only): a pixel whose vote lands farther than this from
    every centre keeps no centre (its object's centre was missed) and falls back to connected
    components; 0 assigns every pixel, as Panoptic-DeepLab does. `split_components`: cut every
    instance by the connected components of its class, so that grouping can only split
    components, never join them. `min_votes` (with `split_components`): a component is split only
    among the centres that collect at least this many of its pixels' votes; a component with fewer
    than two such centres stays whole, as connected components would leave it, so that stray
    centres and noisy offsets cannot over-split an isolated object.
    """

    threshold: float = 0.2
    nms_kernel: int = 7
    top_k: int = 200
    vote_radius: float = 16.0
    split_components: bool = True
    min_fragment: int = 0    # instance pieces smaller than this (px) join their largest sibling
    min_votes: int = 50      # split_components: a centre splits a component only with this many votes in it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """12 hex digits naming these settings (cache keys of measurements made with them)."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GroupConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown grouping setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls(**d)
        if not (cfg.nms_kernel >= 1 and cfg.top_k >= 1 and cfg.min_votes >= 0 and cfg.min_fragment >= 0
                and cfg.vote_radius >= 0 and 0 <= cfg.threshold <= 1):
            raise ValueError(f"grouping settings out of range: {cfg.as_dict()}")
        return cfg


# Tuned settings travel next to the checkpoint they were tuned for: `zoo.instances.tune --write`
# writes <checkpoint stem>.group.json, `zoo.instances.evaluate` and `bench.run` read it.
GROUP_SIDECAR_SUFFIX = ".group.json"


def group_sidecar(weights: str | Path) -> Path:
    """Where the tuned grouping settings of a checkpoint live: best.pt -> best.group.json."""
    w = Path(weights)
    return w.with_name(w.stem + GROUP_SIDECAR_SUFFIX)


def read_group_sidecar(weights: str | Path) -> tuple[GroupConfig, dict[str, Any]] | None:
    """(settings, how they were tuned) from the checkpoint's sidecar, or None when it has none."""
    path = group_sidecar(weights)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return GroupConfig.from_dict(doc["group"]), dict(doc.get("tuned") or {})
    except (ValueError, KeyError, TypeError) as exc:
        from zoo.errors import UsageError

        raise UsageError(f"{path}: not a grouping sidecar of zoo.instances.tune ({exc}); rerun "
                         f"`python -m zoo.instances.tune --weights {weights} --write` or delete it") from None


def find_centres(heat: np.ndarray, *, threshold: float = 0.1, nms_kernel: int = 3,
                 top_k: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint NMS on a (H, W) heat map: ((K, 2) int (y, x) centres, (K,) scores), best first."""
    heat = np.asarray(heat, dtype=np.float32)
    pooled = ndi.maximum_filter(heat, size=nms_kernel, mode="constant", cval=-np.inf)
    keep = (heat == pooled) & (heat > threshold)
    ys, xs = np.nonzero(keep)
    scores = heat[ys, xs]
    order = np.argsort(-scores, kind="stable")[:top_k]
    return np.stack([ys[order], xs[order]], 1).astype(np.int64), scores[order]


def group_pixels(thing: np.ndarray, offset: np.ndarray, centres: np.ndarray, *, max_distance: float = 0.0,
                 chunk: int = 65536) -> np.ndarray:
    """Index (1..K) of the centre nearest to each thing pixel's vote (pixel + offset); 0 off the
    thing pixels, everywhere when there is no centre, and (with `max_distance` > 0) where the
    vote is farther than that from every centre. `offset` is (2, H, W) (dy, dx)."""
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
        best = d.argmin(1)
        out[s:s + chunk] = best + 1
        if max_distance > 0:
            out[s:s + chunk][d[np.arange(len(best)), best] > max_distance ** 2] = 0
    labels[ys, xs] = out
    return labels


def split_by_confident_centres(comp: np.ndarray, offset: np.ndarray, centres: np.ndarray, min_votes: int,
                               chunk: int = 65536) -> np.ndarray:
    """Instance key per pixel (0 off the components): every connected component (`comp`, 1..N) stays
    whole unless two or more centres each collect at least `min_votes` of its pixels' votes; then
    each of its pixels joins the nearest of those centres to its vote (pixel + offset)."""
    key = np.zeros(comp.shape, np.int64)
    ys, xs = np.nonzero(comp)
    if len(ys) == 0:
        return key
    n_comp, k = int(comp.max()) + 1, len(centres)
    pix_comp = comp[ys, xs].astype(np.int64)
    if k == 0:
        key[ys, xs] = pix_comp * (k + 1)
        return key
    vy = ys + offset[0][ys, xs]
    vx = xs + offset[1][ys, xs]
    c = np.asarray(centres, dtype=np.float32)

    def nearest(allowed: np.ndarray | None) -> np.ndarray:
        out = np.empty(len(ys), np.int64)
        for s in range(0, len(ys), chunk):  # bounded memory: chunk x K distances at a time
            d = (vy[s:s + chunk, None] - c[None, :, 0]) ** 2 + (vx[s:s + chunk, None] - c[None, :, 1]) ** 2
            if allowed is not None:
                d[~allowed[pix_comp[s:s + chunk]]] = np.inf
            out[s:s + chunk] = d.argmin(1)
        return out

    votes = np.bincount(pix_comp * k + nearest(None), minlength=n_comp * k).reshape(n_comp, k)
    confident = votes >= max(1, min_votes)
    split = confident.sum(1) >= 2
    owner = nearest(confident) + 1
    key[ys, xs] = pix_comp * (k + 1) + np.where(split[pix_comp], owner, 0)
    return key


def _relabel(key: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..K for the distinct nonzero values of `key` (0 stays 0)."""
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(key.shape).astype(np.int32)
    return inv if uniq[0] == 0 else inv + 1


def _majority_class(ids: np.ndarray, pix_cls: np.ndarray) -> np.ndarray:
    n = int(ids.max()) + 1
    classes = np.full(n, -1, np.int64)
    on = ids > 0
    uniq = np.unique(pix_cls[on])
    if len(uniq):
        votes = np.zeros((n, len(uniq)), np.int64)
        np.add.at(votes, (ids[on], np.searchsorted(uniq, pix_cls[on])), 1)
        present = votes.sum(1) > 0
        classes[present] = uniq[votes[present].argmax(1)]
    return classes


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
    return _relabel(ids)


def panoptic_instances(semantic: np.ndarray, heat: np.ndarray, offset: np.ndarray,
                       thing_classes: Sequence[int], cfg: GroupConfig | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances from a semantic label map (H, W), centre heat (H, W) and offsets (2, H, W).

    Thing pixels join the centre nearest to their vote (image-wide, class by majority vote, as
    Panoptic-DeepLab); pixels that reach no centre within `vote_radius` form instances by
    connected components. Returns (ids int32 (H, W), class of each id, centre score of each id:
    the highest heat on its pixels, clipped to [0, 1]); index 0 of the per-id arrays is unused.
    """
    cfg = cfg or GroupConfig()
    comp, comp_cls = connected_components(semantic, thing_classes)
    centres, _ = find_centres(heat, threshold=cfg.threshold, nms_kernel=cfg.nms_kernel, top_k=cfg.top_k)
    k = len(centres) + 1
    if cfg.split_components and cfg.min_votes > 0:
        key = split_by_confident_centres(comp, offset, centres, cfg.min_votes)
    elif cfg.split_components:
        nearest = group_pixels(comp > 0, offset, centres, max_distance=cfg.vote_radius)
        key = np.where(comp > 0, comp.astype(np.int64) * k + nearest, 0)
    else:
        nearest = group_pixels(comp > 0, offset, centres, max_distance=cfg.vote_radius)
        # centre groups image-wide; unreached pixels by their connected component
        rest, _ = connected_components(np.where((comp > 0) & (nearest == 0), semantic, 255), thing_classes)
        key = np.where(nearest > 0, nearest, np.where(rest > 0, rest.astype(np.int64) + k, 0))
    ids = _relabel(key)
    if cfg.min_fragment > 0:
        ids = _merge_fragments(ids, comp, cfg.min_fragment)
    classes = _majority_class(ids, np.where(comp > 0, comp_cls[comp], -1))
    n = len(classes)
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


def instances_from_output(out: np.ndarray, num_classes: int, thing_classes: Sequence[int],
                          cfg: GroupConfig | None = None,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a deployment runs after the network, on one image's raw output (C + 3, H, W) from
    any backend: semantic argmax, centre NMS and grouping (`panoptic_instances`). Returns
    (semantic (H, W) uint8, instance ids int32 (H, W), class of each id, centre score of each id).
    No softmax: the argmax does not need one (`decode_output` gives probabilities for mask AP).
    The offsets are in input pixels, so the output must be at the input resolution."""
    out = np.asarray(out)
    if out.ndim != 3 or out.shape[0] != num_classes + 3:
        raise ValueError(f"expected a ({num_classes + 3}, H, W) output, got {out.shape}")
    semantic = out[:num_classes].argmax(0).astype(np.uint8 if num_classes <= 256 else np.uint16)
    ids, classes, score = panoptic_instances(semantic, out[num_classes], out[num_classes + 1:], thing_classes, cfg)
    return semantic, ids, classes, score


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
