"""Instance segmentation cells (issue #10 part 5): Panoptic-DeepLab-lite networks in the harness.

An instance network (registry task "instance", `zoo.instances.net`) runs on a segmentation
dataset whose card declares ``thing_classes`` and whose loader has true instance ids
(``synthetic``, ``synthetic-lt``). A sweep is an *instance sweep* when its named models are
instance networks (`bench.runner._task`); the pieces that differ from segmentation cells live here:

* **FP32 weights** (`fp32_checkpoint`): the `best.pt` that ``python -m zoo.instances.train``
  writes (``<artifacts>/checkpoints/<model>/<data>/<recipe>-seed0/``, the family recipe's, else
  the quick recipe's); when neither exists, one is trained with the quick recipe (announced;
  about 7 min on 2 busy CPU cores for the 400 synthetic training images; `--train-epochs`).
  Training reads semantic labels only; the instance ids below are never seen by it.
* **Evaluation set** (`prepare_instance_evalset`): the split's semantic labels *and* true
  instance ids at the cell's input size (nearest resizing), the class of every instance, and
  which instances touch another of their class (the "touching" subset of
  `zoo.instances.metrics.touching_instances`), as one .npz; cached by a fingerprint of the image,
  label and instance files.
* **The cell** (`run_instance_cell`, dispatched from `bench.cell.run_cell`): like a segmentation
  cell (no torch in ONNX Runtime cells: the post-processing is numpy / scipy), but its
  end-to-end pipeline is resize + normalise + model + semantic argmax + centre NMS + grouping
  (`zoo.instances.postprocess.instances_from_output`, default `GroupConfig`), and its accuracy
  pass scores instances (`InstanceScores`): PQ / SQ / RQ over the thing classes (all instances
  and the touching subset), mIoU of the semantic argmax, and parity with the PyTorch FP32
  reference. Post-processing and pre-processing times are measured inside every end-to-end
  iteration and reported apart from the model-only latency. ONNX Runtime sessions stop their
  workers' spinning when a run returns (`ORT_SESSION_CONFIG`), as a deployment that
  post-processes on the same CPU cores between inferences should: left spinning, they held a
  core for ~50 ms after each run and the post-processing took 1.6-2.7x as long (measured on
  2 shared cores; docs/benchmarking.md).
* **Parity** with the PyTorch FP32 reference (its semantic masks and instances, saved by the
  reference run): ``pixel_agreement`` (fraction of pixels with the same semantic argmax, as for
  segmentation) and ``instance_agreement``: the panoptic quality of the cell's instances with the
  reference's instances taken as ground truth, pooled over classes and images,
  ``sum IoU(matched) / (matched + unmatched_cell / 2 + unmatched_ref / 2)`` with matches of the
  same class at IoU > 0.5 (unique). It is 1.0 exactly when both produce the same instances, drops
  for missed, extra, split or merged instances (its RQ part, ``instance_match_f1``) and for
  instances whose masks differ (its SQ part, ``instance_match_iou``). Pixel agreement alone would
  hide a quantized centre heat map: one lost centre merges two objects without changing the
  semantic argmax.
* **Static INT8** uses the segmentation paths, and on both the output head stays float: the
  three 1x1 head convolutions, their concat and the final upsampling. Logits, centre heat and
  offsets share one output tensor, and one 8-bit scale spanning offsets of tens of pixels cannot
  resolve a heat map in 0..1. ONNX Runtime (`quant.ptq_static`): `output_head_nodes`, as for
  segmentation. PyTorch FX (`quant.torch_ptq`): those layers are one function that torch.fx
  leaves whole (`zoo.instances.net.output_layers`); traced through, FX quantized the concat with
  a single scale. `float_nodes` lists what an artifact kept in float; each record stores it
  under ``float_head``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# Reference metrics kept in the reference's sidecar and in every record's "reference" field.
REFERENCE_METRICS = ("pq", "sq", "rq", "pq_touching", "miou", "pixel_accuracy")

# ONNX Runtime session entries of instance cells (recorded as `runtime.session_config`). ORT's
# intra-op workers keep spinning (busy-waiting) after every Run() (~50 ms of CPU each time,
# measured), right when this cell's numpy post-processing starts on the same cores:
# `force_spinning_stop` parks them as Run() returns; spinning inside Run() is unchanged, so the
# model-only latency is measured as in every other cell. See docs/benchmarking.md, Instance cells.
ORT_SESSION_CONFIG = {"session.force_spinning_stop": "1"}


# ---------------------------------------------------------------------------------------------
# planning: which sweeps are instance sweeps, and one-line errors for what they cannot do


def is_instance_model(name: str) -> bool:
    """Whether `name` is a registered instance network (False for unknown names: the planner
    reports those with the list of valid ones)."""
    from zoo.registry import get_entry

    try:
        return get_entry(name).task == "instance"
    except Exception:  # noqa: BLE001 - unknown names are reported by bench.runner._planned
        return False


def check_dataset(data: str) -> None:
    """Raise a one-line UsageError unless `data` has true instance ids for thing classes."""
    from zoo.data import load_card
    from zoo.errors import UsageError

    card = load_card(data)
    if card.task != "segmentation":
        raise UsageError(f"instance networks are measured on segmentation datasets with instance ids "
                         f"(synthetic, synthetic-lt); {data!r} is a {card.task} dataset (score COCO instances "
                         "with python -m zoo.instances.evaluate)")
    if not card.thing_ids:
        raise UsageError(f"{data!r} has no instance ids (its card declares no thing_classes), so PQ cannot be "
                         "measured; use --data synthetic or synthetic-lt")


# ---------------------------------------------------------------------------------------------
# FP32 weights


def fp32_checkpoint(cfg: Any, model: str) -> Path:
    """The cached instance checkpoint of `zoo.instances.train` for (model, cfg.data), trained
    with the quick recipe first when there is none (announced, like segmentation's)."""
    from zoo.instances.train import InstanceTrainConfig, find_checkpoint, train

    path = find_checkpoint(model, cfg.data, cfg.artifacts)
    if path is not None:
        return path
    print(f"[edgezoo] no FP32 checkpoint for {model} on {cfg.data}: training one with the quick recipe "
          "(python -m zoo.instances.train: pseudo-instances from the semantic labels only; a few minutes on a "
          "CPU; cached for next time)", file=sys.stderr, flush=True)
    result = train(InstanceTrainConfig(model=model, data=cfg.data, data_root=cfg.data_root, recipe="quick",
                                       epochs=cfg.train_epochs, artifacts=cfg.artifacts, threads=cfg.threads,
                                       progress=cfg.progress))
    return Path(result["best"])


def group_settings(weights: str | Path | None, log: Callable[[str], Any]) -> dict:
    """The grouping settings of an instance checkpoint's cells: its tuned sidecar
    (`python -m zoo.instances.tune --write`), else `GroupConfig`'s defaults (announced)."""
    from zoo.instances.postprocess import GroupConfig, group_sidecar, read_group_sidecar

    tuned = read_group_sidecar(weights) if weights else None
    if tuned is None:
        log(f"[edgezoo] grouping: GroupConfig defaults (no tuned {group_sidecar(weights).name if weights else 'sidecar'}"
            "; python -m zoo.instances.tune --write makes one)")
        return GroupConfig().as_dict()
    log(f"[edgezoo] grouping: tuned settings of {group_sidecar(weights)}")
    return tuned[0].as_dict()


def check_weights(loaded: Any, data: str) -> None:
    """The checkpoint must predict the dataset's classes (its semantic channels are scored
    against the labels and its thing classes grouped into instances)."""
    from zoo.data import load_card
    from zoo.errors import UsageError

    card = load_card(data)
    if int(loaded.num_classes) != card.num_classes:
        raise UsageError(f"{loaded.path} predicts {loaded.num_classes} classes but {data} has {card.num_classes}")
    meta_things = (loaded.meta or {}).get("thing_ids")
    if meta_things is not None and tuple(int(c) for c in meta_things) != tuple(card.thing_ids):
        raise UsageError(f"{loaded.path} was trained with thing classes {meta_things}, {data} has "
                         f"{list(card.thing_ids)}")


# ---------------------------------------------------------------------------------------------
# evaluation set


def resize_ids(ids: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Instance ids (H, W) to `hw` with nearest-neighbour sampling (Pillow's, as
    `bench.imageops.resize_label` for the semantic labels, so both stay aligned)."""
    from PIL import Image

    h, w = hw
    if ids.shape[:2] == (h, w):
        return ids.astype(np.int32, copy=False)
    return np.asarray(Image.fromarray(ids.astype(np.int32)).resize((w, h), Image.NEAREST)).astype(np.int32)


def prepare_instance_evalset(cfg: Any, hw: tuple[int, int], log: Callable[[str], None]) -> dict:
    """Images, semantic labels and true instance ids of the split at `hw` for the cells.

    One .npz (``labels`` (N, H, W) uint8, ``ids`` (N, H, W) uint16, ``classes`` / ``touching``:
    every image's per-id arrays (index 0 unused) concatenated, ``counts``: their lengths,
    ``thing_ids``), cached by a fingerprint of the files (path, size, mtime); `sha256` hashes
    their contents. Touching flags are computed on the resized ids (gap 1 px, as
    ``python -m zoo.instances.evaluate``)."""
    from bench.evalset_cache import contents_sha256, evalset_slot, file_listing
    from bench.imageops import resize_label
    from zoo.errors import UsageError
    from zoo.instances.data import open_data
    from zoo.instances.metrics import touching_instances
    from zoo.io import atomic_path, write_json

    check_dataset(cfg.data)
    data = open_data(cfg.data, root=cfg.data_root, split=cfg.split, with_instances=True, progress=cfg.progress)
    ds = data.dataset.ds
    if not hasattr(ds, "instance_path"):
        raise UsageError(f"the {cfg.data} loader has no instance-id files to fingerprint; "
                         "use synthetic or synthetic-lt")
    n = len(ds) if not cfg.max_images else min(len(ds), cfg.max_images)
    if n == 0:
        raise UsageError(f"the {cfg.data} {cfg.split} split has no images")
    files = []
    for i in range(n):
        img, lab = ds.files[i]
        files.append((Path(img).resolve(), Path(lab).resolve(), Path(ds.instance_path(i)).resolve()))
    listing = file_listing(p for trio in files for p in trio)
    slot = evalset_slot(cfg.artifacts, cfg.data, cfg.split, [cfg.data, cfg.split, list(hw), "instances", listing],
                        f"_{hw[0]}x{hw[1]}_inst")
    if slot.meta is not None:
        return slot.meta
    log(f"evaluation set: {n} {cfg.data}/{cfg.split} labels and instance ids at {hw[0]}x{hw[1]} -> {slot.folder}")
    labels = np.zeros((n, *hw), dtype=np.uint8)
    ids_all = np.zeros((n, *hw), dtype=np.uint16)
    classes, touching, counts = [], [], []
    for i in range(n):
        s = data.dataset.load(i)
        labels[i] = resize_label(np.asarray(s.semantic), hw)
        ids = resize_ids(s.ids, hw)
        if ids.max() > np.iinfo(np.uint16).max:
            raise UsageError(f"{files[i][2]} has more than 65535 instances")
        ids_all[i] = ids
        classes.append(np.asarray(s.classes, np.int64))
        touching.append(touching_instances(ids, s.classes))
        counts.append(len(s.classes))
    labels_path = slot.folder / "labels.npz"
    with atomic_path(labels_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, labels=labels, ids=ids_all, classes=np.concatenate(classes),
                                touching=np.concatenate(touching), counts=np.asarray(counts, np.int64),
                                thing_ids=np.asarray(data.thing_ids, np.int64))
    present = [np.bincount(ids_all[i].ravel(), minlength=counts[i])[1:] > 0 for i in range(n)]
    meta = {"task": "instance", "labels": str(labels_path), "images": [str(f[0]) for f in files], "n": n,
            "input_hw": list(hw), "thing_ids": list(data.thing_ids), "thing_classes": list(data.thing_names),
            "instances": int(sum(int(p.sum()) for p in present)),
            "touching_instances": int(sum(int((t[1:] & p).sum()) for t, p in zip(touching, present))),
            "fingerprint": slot.fingerprint, "sha256": contents_sha256(p for trio in files for p in trio),
            "dataset": cfg.data, "split": cfg.split}
    write_json(slot.meta_path, meta)
    return meta


def _split(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(np.asarray(flat), np.cumsum(counts)[:-1]) if len(counts) else []


def load_evalset(path: str) -> dict[str, Any]:
    """The arrays of `prepare_instance_evalset`, per image."""
    with np.load(path) as z:
        counts = z["counts"]
        return {"labels": z["labels"], "ids": z["ids"], "classes": _split(z["classes"], counts),
                "touching": _split(z["touching"], counts), "thing_ids": tuple(int(c) for c in z["thing_ids"])}


def save_outputs(path: str, semantic: np.ndarray, ids: Sequence[np.ndarray], classes: Sequence[np.ndarray]) -> None:
    """A reference run's semantic masks and instances (atomically), for the cells' parity."""
    from zoo.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, masks=semantic, ids=np.stack(ids).astype(np.uint16),
                                classes=np.concatenate(classes).astype(np.int64),
                                counts=np.asarray([len(c) for c in classes], np.int64))


def load_outputs(path: str) -> dict[str, Any]:
    with np.load(path) as z:
        return {"masks": z["masks"], "ids": z["ids"], "classes": _split(z["classes"], z["counts"])}


# ---------------------------------------------------------------------------------------------
# scoring (numpy / scipy: runs inside the cell, which must not import torch)


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


class InstanceScores:
    """Accumulates, image by image, everything an instance cell reports (see the module doc)."""

    def __init__(self, num_classes: int, ignore_index: int, thing_ids: Sequence[int],
                 class_names: Sequence[str] = ()) -> None:
        from zoo.instances.metrics import PQAccumulator
        from zoo.metrics import ConfusionMatrix

        self.ignore_index = int(ignore_index)
        self.class_names = tuple(class_names)
        names = [class_names[c] if c < len(class_names) else str(c) for c in thing_ids]
        self.conf = ConfusionMatrix(int(num_classes), self.ignore_index)
        self.pq_all = PQAccumulator(tuple(thing_ids), names)
        self.pq_touching = PQAccumulator(tuple(thing_ids), names)
        self.vs_ref = PQAccumulator(tuple(thing_ids), names)
        self.pix_equal = self.pix_total = 0
        self.instances = self.ref_instances = 0
        self.images = 0

    def add(self, semantic: np.ndarray, ids: np.ndarray, classes: np.ndarray, label: np.ndarray,
            gt_ids: np.ndarray, gt_classes: np.ndarray, touching: np.ndarray,
            ref: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """One image: the cell's semantic argmax and instances, the ground truth, and optionally
        the reference's (semantic, ids, classes)."""
        gt_ids = np.asarray(gt_ids, np.int64)
        void = np.asarray(label) == self.ignore_index
        self.conf.update(semantic, label)
        self.pq_all.add(gt_ids, gt_classes, ids, classes, void=void)
        self.pq_touching.add(gt_ids, gt_classes, ids, classes, void=void, counted=touching)
        self.instances += int((np.bincount(np.asarray(ids).ravel(), minlength=len(classes))[1:] > 0).sum())
        self.images += 1
        if ref is not None:
            ref_sem, ref_ids, ref_cls = ref
            if ref_sem.shape != semantic.shape:
                raise ValueError(f"mask shape {semantic.shape} differs from the reference's {ref_sem.shape}")
            self.pix_equal += int(np.count_nonzero(semantic == ref_sem))
            self.pix_total += int(semantic.size)
            self.vs_ref.add(np.asarray(ref_ids, np.int64), ref_cls, ids, classes)
            self.ref_instances += int((np.bincount(np.asarray(ref_ids).ravel(), minlength=len(ref_cls))[1:] > 0).sum())

    def agreement(self) -> dict[str, Any]:
        """Parity with the reference, pooled over classes and images (None without a reference,
        or where neither side has an instance)."""
        if not self.pix_total:
            return {"pixel_agreement": None, "instance_agreement": None, "instance_match_f1": None,
                    "instance_match_iou": None}
        cc = self.vs_ref.counts.values()
        tp, fp, fn = (sum(getattr(c, k) for c in cc) for k in ("tp", "fp", "fn"))
        iou = sum(c.iou_sum for c in cc)
        denom = tp + 0.5 * fp + 0.5 * fn
        return {"pixel_agreement": self.pix_equal / self.pix_total,
                "instance_agreement": iou / denom if denom else None,
                "instance_match_f1": tp / denom if denom else None,
                "instance_match_iou": iou / tp if tp else None,
                "instances_matched_vs_ref": tp, "instances_ref": self.ref_instances}

    def as_dict(self) -> dict[str, Any]:
        seg = self.conf.scores(self.class_names).as_dict()
        out: dict[str, Any] = {}
        for name, acc in (("", self.pq_all), ("_touching", self.pq_touching)):
            r = acc.result()
            out.update({f"pq{name}": _finite(r.pq), f"sq{name}": _finite(r.sq), f"rq{name}": _finite(r.rq),
                        f"pq{name}_per_class": r.per_class, f"pq{name}_counts": r.counts})
        out.update(miou=seg["miou"], pixel_accuracy=seg["pixel_accuracy"], per_class_iou=seg["per_class_iou"],
                   instances=self.instances)
        return out


# ---------------------------------------------------------------------------------------------
# the cell process


def run_instance_cell(spec: dict) -> dict:
    """One instance cell, or (``mode: "reference"``) the PyTorch FP32 reference run that saves
    its semantic masks and instances. See the module docstring."""
    from bench import imageops
    from bench.cell import _groups, measure_split_e2e, open_and_load, timing_batches, timing_fields
    from bench.timing import TimingProfile, measure
    from zoo.instances.postprocess import GroupConfig, instances_from_output

    mode = spec.get("mode", "cell")
    hw = (int(spec["input_hw"][0]), int(spec["input_hw"][1]))
    batch = int(spec.get("batch", 1))
    num_classes = int(spec["num_classes"])
    cell_id = spec.get("cell_id", "cell")
    group = GroupConfig.from_dict(spec["group"]) if spec.get("group") else GroupConfig()

    # -- data (images, labels, true instances, reference outputs), before the memory baseline
    gt = load_evalset(spec["evalset"]["labels"])
    thing_ids = gt["thing_ids"]
    images = [imageops.read_rgb(p) for p in spec["evalset"]["images"]]
    if len(images) != len(gt["labels"]) or not images:
        raise RuntimeError(f"evaluation set {spec['evalset']['labels']} lists {len(images)} images for "
                           f"{len(gt['labels'])} labels")
    ref = None
    ref_spec = spec.get("reference") or {}
    if mode == "cell" and ref_spec.get("path"):
        ref = load_outputs(ref_spec["path"])
        if len(ref["masks"]) != len(images):
            raise RuntimeError(f"reference {ref_spec['path']} has {len(ref['masks'])} masks for {len(images)} images")
    pre = imageops.Preprocessor(spec["preprocess"], hw)
    e2e_inputs = timing_batches(images, spec, batch)
    model_inputs = [pre(g) for g in e2e_inputs]

    def postprocess(out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        out = np.asarray(out)
        if out.ndim != 4 or tuple(out.shape[-2:]) != hw:
            raise RuntimeError(f"expected (N, {num_classes + 3}, {hw[0]}, {hw[1]}) outputs (offsets are in input "
                               f"pixels), got {out.shape}")
        return [instances_from_output(o, num_classes, thing_ids, group) for o in out]

    spec = {**spec, "backend_options": {**(spec.get("backend_options") or {}),
                                        "ort_session_config": ORT_SESSION_CONFIG}}  # other backends ignore it
    loaded = open_and_load(spec, model_inputs[0], cell_id, int(spec["threads"]))
    if isinstance(loaded, dict):
        return loaded
    backend, build, mem, load_s, first_ms = loaded.backend, loaded.build, loaded.mem, loaded.load_s, loaded.first_ms

    # -- accuracy (and parity) through the end-to-end pipeline: pixels -> instances ------------
    scores = InstanceScores(num_classes, int(spec.get("ignore_index", 255)), thing_ids,
                            tuple(spec.get("classes") or ()))
    sem_out = np.zeros((len(images), *hw), np.uint8) if mode == "reference" else None
    ids_out: list[np.ndarray] = []
    cls_out: list[np.ndarray] = []
    for idx in _groups(len(images), batch):
        group_images = [images[i] for i in idx]
        group_images += [group_images[-1]] * (batch - len(group_images))  # static batch: pad, drop extras
        results = postprocess(backend.infer(pre(group_images))[: len(idx)])
        for (sem, ids, cls, _score), i in zip(results, idx):
            r = (ref["masks"][i], ref["ids"][i], ref["classes"][i]) if ref is not None else None
            scores.add(sem, ids, cls, gt["labels"][i], gt["ids"][i], gt["classes"][i], gt["touching"][i], r)
            if sem_out is not None:
                sem_out[i] = sem
                ids_out.append(ids)
                cls_out.append(cls)
    metrics = {**scores.as_dict(), **(scores.agreement() if ref is not None else {})}
    common = {"status": "ok", "error": None, "metrics": metrics, "images": len(images),
              "postprocess": {"group": group.as_dict(), "function": "zoo.instances.postprocess.instances_from_output"},
              "load_s": load_s, "first_inference_ms": first_ms, "build": build}
    if mode == "reference":
        save_outputs(spec["reference_out"], sem_out, ids_out, cls_out)
        return {**common, "imports_torch": "torch" in sys.modules, **mem.stop()}

    # -- timing: model only, then end to end (resize + normalise, model, argmax + NMS + grouping)
    profile = TimingProfile(**spec["timing_profile"])
    if hasattr(backend, "reset_device_times"):
        backend.reset_device_times()
    model = measure(backend.infer, model_inputs, profile)
    device_ms = list(getattr(backend, "device_times_ms", []) or [])
    split_ns: list[tuple[int, int]] = []

    def end_to_end(group_images: list) -> object:
        t_0 = time.perf_counter_ns()
        x = pre(group_images)
        t_1 = time.perf_counter_ns()
        out = backend.infer(x)
        t_2 = time.perf_counter_ns()
        result = postprocess(out)
        split_ns.append((t_1 - t_0, time.perf_counter_ns() - t_2))
        return result

    e2e, pre_ms, post_ms, e2e_profile = measure_split_e2e(end_to_end, e2e_inputs, profile, split_ns)
    memory = mem.stop()
    return {**common, **timing_fields(spec, backend, model, e2e, e2e_profile, device_ms, pre_ms, post_ms), **memory}


# ---------------------------------------------------------------------------------------------
# the parent: records and the summary table


def float_nodes(artifact: dict | None) -> dict | None:
    """What a static INT8 artifact kept in float at the output, or None for float artifacts.

    ONNX (QDQ): the nodes its quantization sidecar lists as excluded (`float_head`:
    `quant.ptq_static.output_head_nodes`). PyTorch FX INT8: `zoo.instances.net.output_layers`,
    which torch.fx leaves whole and therefore float (see its docstring)."""
    why = ("logits, centre heat (0..1) and offsets (input pixels) leave the network as one tensor; one 8-bit "
           "scale over it would round the heat map to a few levels and break centre NMS")
    if not artifact or not artifact.get("quant"):
        return None
    if artifact.get("kind") == "torch" and artifact.get("fx_int8"):
        return {"float_head": True, "nodes": ["zoo.instances.net.output_layers: the semantic / centre / offset 1x1 "
                                              "convs, their concat and the upsampling (torch.fx.wrap)"], "why": why}
    sidecar = Path(artifact["path"]).with_suffix(".json")
    if artifact.get("kind") != "onnx" or not sidecar.is_file():
        return None
    meta = json.loads(sidecar.read_text())
    if "float_head" not in meta:
        return None
    return {"float_head": bool(meta["float_head"]), "nodes": list(meta.get("nodes_to_exclude") or []), "why": why}


def protocol(hw: tuple[int, int], group: dict | None = None) -> dict:
    """How an instance cell's numbers are made (stored in every instance record)."""
    from zoo.instances.postprocess import GroupConfig

    return {
        "input": f"resized (bilinear) to {hw[0]}x{hw[1]} and normalised; ground-truth labels and instance ids "
                 "resized nearest to the same size (python -m zoo.instances.evaluate pads to a multiple of 32 "
                 "instead, so its PQ differs slightly)",
        "postprocess": {"group": group or GroupConfig().as_dict(),
                        "steps": "semantic argmax; centre NMS (max-pool keypoint NMS, threshold, top-k); then, with "
                                 "split_components, each connected component of a thing class is split between the "
                                 "centres that collect >= min_votes of its pixels' offset votes (else kept whole); "
                                 "without it, every thing pixel joins the centre nearest to its vote and unreached "
                                 "pixels form instances by connected components "
                                 "(zoo.instances.postprocess.instances_from_output)"},
        "pq": "PQ / SQ / RQ over the thing classes (zoo.instances.metrics.PQAccumulator, panopticapi rules: match "
              "at IoU > 0.5, void pixels out of the union), averaged over the classes with segments; *_touching: "
              "only ground-truth instances within 1 px of another of their class are counted",
        "miou": "semantic argmax vs the labels over all classes (void ignored)",
        "pixel_agreement": "fraction of pixels whose semantic argmax equals the PyTorch FP32 reference's",
        "instance_agreement": "PQ of this cell's instances with the PyTorch FP32 reference's instances as ground "
                              "truth, pooled over classes and images (1.0 = the same instances); "
                              "instance_match_f1 is its RQ part, instance_match_iou its SQ part",
        "e2e": "resize + normalise + model + argmax + centre NMS + grouping",
        "postprocess_latency": "argmax + centre NMS + grouping, timed inside each e2e iteration",
    }


def fill_metrics(metrics: dict, reference: dict | None) -> dict:
    """A cell's metrics with the deltas against the PyTorch FP32 reference's (`reference`: an
    ok reference, or None)."""
    out = dict(metrics)
    for k in ("pixel_agreement", "instance_agreement", "instance_match_f1", "instance_match_iou"):
        out.setdefault(k, None)
    ref = (reference or {}).get("metrics") or {}
    for k in ("pq", "pq_touching", "miou"):
        out[f"{k}_delta_vs_fp32_torch"] = (out[k] - ref[k] if isinstance(out.get(k), (int, float))
                                           and isinstance(ref.get(k), (int, float)) else None)
    return out


def record_fields(result: dict, artifact: dict | None, hw: tuple[int, int]) -> dict:
    """The instance-only fields of a record (besides those every cell has)."""
    post, e2e = result.get("postprocess_latency_ms") or {}, result.get("e2e_latency_ms") or {}
    return {
        "task": "instance", "protocol": protocol(hw, (result.get("postprocess") or {}).get("group")),
        "postprocess": result.get("postprocess"),
        "postprocess_latency_ms": post, "postprocess_samples_ms": result.get("postprocess_samples_ms", []),
        "preprocess_latency_ms": result.get("preprocess_latency_ms") or {},
        "postprocess_share_of_e2e": (post["median"] / e2e["median"]
                                     if post.get("median") is not None and e2e.get("median") else None),
        "float_head": float_nodes(artifact),
    }


def markdown_table(records: list[dict], several_sizes: bool, batched: bool) -> str:
    """The summary table of an instance sweep: PQ (things), SQ, RQ, PQ on touching instances,
    mIoU, agreement with the FP32 reference, size, model-only and end-to-end latency, memory."""
    from tabulate import tabulate

    from bench.runner import _row_head, fmt_cell as f, fmt_pct as pct

    rows = []
    for r in records:
        lat, e2e = r.get("latency_ms") or {}, r.get("e2e_latency_ms") or {}
        post = r.get("postprocess_latency_ms") or {}
        m = r.get("metrics") or {}
        rows.append(_row_head(r, several_sizes, batched) + [
            pct(m.get("pq")), pct(m.get("sq")), pct(m.get("rq")), pct(m.get("pq_touching")), pct(m.get("miou")),
            pct(m.get("pixel_agreement")), pct(m.get("instance_agreement")),
            f(r.get("size_mb"), ".2f"), f(lat.get("median"), ".1f"), f(lat.get("p90"), ".1f"), f(lat.get("cv"), ".3f"),
            f(r.get("images_per_s") if batched else r.get("fps"), ".1f"), f(post.get("median"), ".1f"),
            f(e2e.get("median"), ".1f"), f(r.get("peak_rss_mb"), ".0f"), f(r.get("rss_delta_mb"), ".0f")])
    headers = ["model", "variant", "backend"] + (["input"] if several_sizes else []) + (["batch"] if batched else [])
    headers += ["status", "PQ %", "SQ %", "RQ %", "PQ touch %", "mIoU %", "agree %", "inst agree %", "size MB",
                "median ms", "p90 ms", "CV", "images/s" if batched else "FPS", "post ms", "e2e median ms",
                "peak RSS MB", "RSS delta MB"]
    note = ("PQ / SQ / RQ: thing classes; agree: semantic argmax vs PyTorch FP32; inst agree: PQ of the instances "
            "vs the PyTorch FP32 instances; post: argmax + centre NMS + grouping; e2e = resize + normalise + model "
            "+ post")
    return tabulate(rows, headers=headers, tablefmt="github") + "\n\n" + note
