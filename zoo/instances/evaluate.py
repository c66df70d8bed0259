"""PQ-things and COCO mask AP of the learned model and both baselines, on data with true instances.

    python -m zoo.instances.evaluate --weights artifacts/checkpoints/panoptic_lite_fastdepthseg/synthetic/panoptic_lite-seed{0,1,2}/best.pt \\
        --data synthetic --split test
    python -m zoo.instances.evaluate --data coco --data-root ../shared/data/coco-tiny --split val --semantic gt

Methods, all on the SAME semantic mask so that they differ only in how they form instances:
``learned`` (centre NMS + offset grouping, `zoo.instances.postprocess`), ``cc`` (connected
components) and ``watershed`` (distance-transform watershed), `zoo.instances.baselines`. The mask
is the network's semantic prediction (``--semantic pred``, the default) or the ground-truth
semantic label (``--semantic gt``: an oracle that isolates instance separation; with no
--weights only the two baselines run).

Diagnosis: ``--true-heads centre|offset|both`` replaces the learned model's centre heat map and/or
offsets by targets made from the TRUE instances (`zoo.instances.pseudo.make_targets`, the
checkpoint's sigma), so that the learned row tells which head limits it (an oracle, not a result).

Subsets: ``all`` (every ground-truth thing instance) and ``touching``: the ground-truth instances
that come within --gap pixels (default 1) of another instance of the same class
(`zoo.instances.metrics.touching_instances`); the others are ignored, and a prediction counts as a
false positive only when more than half of it lies on touching instances of its class.
``--min-area N`` scores objects of at least N px in both subsets (smaller true instances are
ignored like void, and so are unmatched predictions smaller than N), as COCO's area ranges do:
on the synthetic scenes 40 % of the thing instances, and most touching poles and signs, are
smaller than 50 px, which no method here segments. Several
--weights (seeds) give per-seed results and mean / std (population std over seeds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from zoo.checkpoints import CheckpointError, read_checkpoint
from zoo.data import Preprocess
from zoo.instances.baselines import WATERSHED_H_ABS, WATERSHED_H_REL, cc_instances, watershed_instances
from zoo.instances.data import InstanceData, open_data
from zoo.instances.metrics import MaskAP, PQAccumulator, touching_instances
from zoo.instances.postprocess import (GroupConfig, decode_output, group_sidecar, mean_class_probability,
                                       panoptic_instances, read_group_sidecar)
from zoo.instances.pseudo import make_targets
from zoo.metrics import ConfusionMatrix
from zoo.registry import get_entry

METHODS = ("learned", "cc", "watershed")
TRUE_HEADS = ("none", "centre", "offset", "both")
SUBSETS = ("all", "touching")


@dataclass
class InstanceEvalConfig:
    weights: list[str] = field(default_factory=list)
    data: str = "synthetic"
    data_root: str | Path | None = None
    split: str = "test"
    num_images: int | None = None
    size: tuple[int, int] | None = None
    semantic: str = "pred"             # "pred" | "gt"
    # Grouping of the learned method: `group` for every checkpoint when set; else each
    # checkpoint's tuned sidecar (`zoo.instances.tune --write`) or the defaults; `group_overrides`
    # (settings given on the command line) replace single fields of either.
    group: GroupConfig | None = None
    group_overrides: dict[str, Any] = field(default_factory=dict)
    ws_h_abs: float = WATERSHED_H_ABS
    ws_h_rel: float = WATERSHED_H_REL
    gap: int = 1
    min_area: int = 0                  # evaluate objects of >= this many px (smaller ones ignored, like void)
    true_heads: str = "none"           # "none" | "centre" | "offset" | "both": oracle heads (diagnosis)
    threads: int | None = None
    progress: bool = True


def load_instance_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    state = read_checkpoint(path)
    meta = state.get("meta") or {}
    if meta.get("task") != "instance" or "num_classes" not in meta:
        raise CheckpointError(f"{path} is not an instance checkpoint of zoo.instances.train (meta task "
                              f"{meta.get('task')!r})")
    model = get_entry(meta["model"]).build(num_classes=int(meta["num_classes"]), **(meta.get("build_kwargs") or {}))
    model.load_state_dict(state["model"])
    return model.eval(), meta


def load_model_for(path: str | Path, data: InstanceData) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`load_instance_model`, refusing a checkpoint that predicts other classes than `data` has."""
    from zoo.errors import UsageError

    model, meta = load_instance_model(path)
    if int(meta["num_classes"]) != data.num_classes:
        raise UsageError(f"{path} predicts {meta['num_classes']} classes but {data.name} has {data.num_classes}")
    return model, meta


@torch.inference_mode()
def predict(model: torch.nn.Module, pre: Preprocess, image: np.ndarray) -> np.ndarray:
    """The raw output (C + 3, H, W) for one image; the input is padded to a multiple of 32 and the
    output cropped back. Decode it with `zoo.instances.postprocess.decode_output`."""
    x = pre(image)[None]
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))  # zeros = the mean colour after normalisation
    return model(x)[0, :, :h, :w].numpy()


def _summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in METHODS:
        if method not in per_seed[0]:
            continue
        out[method] = {}
        for subset in SUBSETS:
            row = {}
            for k in ("pq", "sq", "rq"):
                vals = [r[method][subset][k] for r in per_seed]
                row[k] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals), "values": vals}
            out[method][subset] = row
        for k in ("ap", "ap50"):
            vals = [r[method]["mask_ap"][k] for r in per_seed]
            out[method][k] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals), "values": vals}
    return out


def resolve_group(cfg: InstanceEvalConfig, weights: str | Path | None) -> tuple[GroupConfig, str]:
    """The learned method's grouping for one checkpoint and where it came from."""
    if cfg.group is not None:
        base, source = cfg.group, "given"
    else:
        tuned = read_group_sidecar(weights) if weights else None
        base, source = (tuned[0], str(group_sidecar(weights))) if tuned else (GroupConfig(), "defaults")
    if cfg.group_overrides:
        try:
            base = GroupConfig.from_dict({**base.as_dict(), **cfg.group_overrides})
        except ValueError as exc:
            from zoo.errors import UsageError

            raise UsageError(f"grouping flags: {exc}") from None
        source += " + command line"
    return base, source


def evaluate_one(data: InstanceData, cfg: InstanceEvalConfig, model: torch.nn.Module | None,
                 meta: dict[str, Any] | None, group: GroupConfig | None = None) -> dict[str, Any]:
    """All methods on every image of `data` with one model (or none, with oracle semantics)."""
    group = group or GroupConfig()
    methods = METHODS if model is not None else METHODS[1:]
    names = data.thing_names
    pq = {m: {s: PQAccumulator(data.thing_ids, names) for s in SUBSETS} for m in methods}
    ap = {m: MaskAP(data.thing_ids, names) for m in methods}
    pre = Preprocess.from_dict(meta["preprocess"]) if meta and meta.get("preprocess") else data.preprocess
    n_touch_inst = n_inst = n_touch_img = 0
    seconds = {m: 0.0 for m in methods}
    # The learned model's semantic mask against the labels: every method's instances start from it.
    conf = ConfusionMatrix(data.num_classes, data.ignore_index) if model is not None else None
    for i in tqdm(range(len(data.dataset)), desc="instances eval", disable=not cfg.progress, leave=False):
        s = data.dataset.load(i)
        touching = touching_instances(s.ids, s.classes, gap=cfg.gap)
        n_inst += int((np.bincount(s.ids.ravel(), minlength=len(s.classes))[1:] > 0).sum())
        n_touch_inst += int(touching.sum())
        n_touch_img += int(touching.any())
        void = s.semantic == data.ignore_index
        probs = None
        if model is not None:
            t = time.perf_counter()
            probs, heat, off = decode_output(predict(model, pre, s.image), data.num_classes)
            seconds["learned"] += time.perf_counter() - t
            if cfg.true_heads != "none":
                true = make_targets(s.ids, np.ones(len(s.classes), bool), sigma=float(meta.get("sigma", 3.0)))
                heat = true.heat if cfg.true_heads in ("centre", "both") else heat
                off = true.offset if cfg.true_heads in ("offset", "both") else off
        if conf is not None:
            conf.update(probs.argmax(0), s.semantic)
        sem = s.semantic if cfg.semantic == "gt" else probs.argmax(0).astype(np.uint8)
        results = {}
        if model is not None:
            t = time.perf_counter()
            ids, cls, centre_score = panoptic_instances(sem, heat, off, data.thing_ids, group)
            seconds["learned"] += time.perf_counter() - t
            results["learned"] = (ids, cls, centre_score)
        t = time.perf_counter()
        ids, cls = cc_instances(sem, data.thing_ids)
        seconds["cc"] += time.perf_counter() - t
        results["cc"] = (ids, cls, np.ones(len(cls), np.float32))
        t = time.perf_counter()
        ids, cls = watershed_instances(sem, data.thing_ids, h_abs=cfg.ws_h_abs, h_rel=cfg.ws_h_rel)
        seconds["watershed"] += time.perf_counter() - t
        results["watershed"] = (ids, cls, np.ones(len(cls), np.float32))
        for m, (ids, cls, score) in results.items():
            pq[m]["all"].add(s.ids, s.classes, ids, cls, void=void, min_area=cfg.min_area)
            pq[m]["touching"].add(s.ids, s.classes, ids, cls, void=void, counted=touching, min_area=cfg.min_area)
            if probs is not None:  # class confidence; the learned method also has its centre score
                score = mean_class_probability(probs, ids, cls) * score
            ap[m].add(s.ids, s.classes, ids, cls, score)
    out: dict[str, Any] = {"images": len(data.dataset), "instances": n_inst, "touching_instances": n_touch_inst,
                           "images_with_touching": n_touch_img,
                           "semantic_scores": conf.scores(data.classes).as_dict() if conf is not None else None}
    for m in methods:
        out[m] = {s: pq[m][s].result().as_dict() for s in SUBSETS}
        out[m]["mask_ap"] = ap[m].result()
        out[m]["ms_per_image"] = 1000 * seconds[m] / max(1, len(data.dataset))
    return out


def run_eval(cfg: InstanceEvalConfig) -> dict[str, Any]:
    from zoo.errors import UsageError

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.semantic not in ("pred", "gt"):
        raise UsageError(f"--semantic must be pred or gt, got {cfg.semantic!r}")
    if cfg.min_area < 0:
        raise UsageError(f"--min-area must be >= 0, got {cfg.min_area}")
    if cfg.true_heads not in TRUE_HEADS:
        raise UsageError(f"--true-heads must be one of {', '.join(TRUE_HEADS)}, got {cfg.true_heads!r}")
    if cfg.true_heads != "none" and not cfg.weights:
        raise UsageError("--true-heads replaces heads of a learned model; pass --weights")
    if not cfg.weights and cfg.semantic == "pred":
        raise UsageError("--semantic pred needs --weights (a trained model); use --semantic gt for baselines alone")
    data = open_data(cfg.data, root=cfg.data_root, split=cfg.split, with_instances=True,
                     num_images=cfg.num_images, size=cfg.size, progress=cfg.progress)
    per_seed = []
    for path in cfg.weights or [None]:
        model = meta = None
        if path is not None:
            model, meta = load_model_for(path, data)
        group, source = resolve_group(cfg, path)
        res = evaluate_one(data, cfg, model, meta, group)
        res["group"], res["group_source"] = group.as_dict(), source
        res["weights"] = str(path) if path else None
        res["seed"] = meta.get("seed") if meta else None
        per_seed.append(res)
    return {"data": cfg.data, "split": cfg.split, "semantic": cfg.semantic, "true_heads": cfg.true_heads, "gap": cfg.gap,
            "min_area": cfg.min_area,
            "watershed": {"h_abs": cfg.ws_h_abs, "h_rel": cfg.ws_h_rel},
            "thing_classes": list(data.thing_names), "per_seed": per_seed, "summary": _summary(per_seed)}


def format_table(res: dict[str, Any]) -> str:
    first = res["per_seed"][0]
    lines = [f"{res['data']}/{res['split']}: {first['images']} images, {first['instances']} thing instances, "
             f"{first['touching_instances']} touching (gap <= {res['gap']} px, in {first['images_with_touching']} "
             f"images); semantic mask: {'predicted' if res['semantic'] == 'pred' else 'ground truth (oracle)'}; "
             f"{len(res['per_seed'])} model(s)"
             + (f"; objects >= {res['min_area']} px (smaller ones ignored)" if res.get("min_area") else "")
             + (f"; learned row with TRUE {res['true_heads']} head(s) (oracle)" if res.get("true_heads", "none") != "none"
                else ""),
             f"{'method':<10} {'subset':<9} {'PQ':>13} {'SQ':>13} {'RQ':>13} {'mask AP':>13} {'AP50':>13}"]
    if "learned" in res["summary"]:
        for g, source in dict.fromkeys((json.dumps(r["group"]), r["group_source"]) for r in res["per_seed"]):
            g = json.loads(g)
            mode = (f"split components, min votes {g['min_votes']}" if g["split_components"]
                    else f"image-wide, vote radius {g['vote_radius']:g}")
            lines.insert(1, f"learned grouping: threshold {g['threshold']:g}, NMS {g['nms_kernel']}, {mode} ({source})")

    def cell(d: dict[str, Any]) -> str:
        return f"{100 * d['mean']:6.2f}±{100 * d['std']:5.2f}"

    scores = [r["semantic_scores"] for r in res["per_seed"] if r.get("semantic_scores")]
    if scores:  # the predicted semantic mask, mean over models (what limits every method with --semantic pred)
        things = res["thing_classes"]
        iou = {c: statistics.fmean(100 * (s["per_class_iou"].get(c) or 0.0) for s in scores) for c in things}
        per_thing = (", ".join(f"{c} {v:.1f}" for c, v in iou.items()) if len(iou) <= 8 else  # COCO: 80 things
                     f"mean {statistics.fmean(iou.values()):.1f} over {len(iou)} classes, best "
                     + ", ".join(f"{c} {v:.1f}" for c, v in sorted(iou.items(), key=lambda kv: -kv[1])[:3]))
        lines.insert(1, f"semantic mask of the model(s): mIoU {statistics.fmean(100 * s['miou'] for s in scores):.2f}; "
                        f"thing IoU {per_thing}")

    for method, rows in res["summary"].items():
        for subset in SUBSETS:
            r = rows[subset]
            extra = f" {cell(rows['ap'])} {cell(rows['ap50'])}" if subset == "all" else ""
            lines.append(f"{method:<10} {subset:<9} {cell(r['pq'])} {cell(r['sq'])} {cell(r['rq'])}{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.instances.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="*", default=[], help="instance checkpoints (one per seed)")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--split", default="test")
    p.add_argument("--num-images", type=int, help="evaluate the first N images")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="synthetic image size")
    p.add_argument("--semantic", choices=("pred", "gt"), default="pred")
    # Grouping flags default to None: unset, a checkpoint's tuned sidecar (zoo.instances.tune
    # --write) or GroupConfig's defaults apply; set, they replace that one setting.
    g = GroupConfig()
    p.add_argument("--threshold", type=float, help=f"centre heat threshold (default: tuned sidecar, else {g.threshold})")
    p.add_argument("--nms-kernel", type=int, help=f"centre NMS window (default: tuned sidecar, else {g.nms_kernel})")
    p.add_argument("--vote-radius", type=float,
                   help=f"px; votes farther from every centre fall back to connected components (0: off; "
                        f"default: tuned sidecar, else {g.vote_radius:g})")
    p.add_argument("--split-components", action=argparse.BooleanOptionalAction,
                   help="grouping only splits connected components (default: tuned sidecar, else "
                        f"{g.split_components}); --no-split-components: Panoptic-DeepLab's image-wide grouping")
    p.add_argument("--min-fragment", type=int, help=f"default: tuned sidecar, else {g.min_fragment}")
    p.add_argument("--min-votes", type=int,
                   help="with --split-components: a centre splits a component only with this many votes in it "
                        f"(0: every centre splits; default: tuned sidecar, else {g.min_votes})")
    p.add_argument("--ws-h-abs", type=float, default=WATERSHED_H_ABS, help="watershed: minimum peak dynamic (px)")
    p.add_argument("--ws-h-rel", type=float, default=WATERSHED_H_REL,
                   help="watershed: minimum peak dynamic / depth (default tuned on synthetic val)")
    p.add_argument("--gap", type=int, default=1, help="touching: at most this many pixels apart")
    p.add_argument("--min-area", type=int, default=0,
                   help="score objects of at least this many px; smaller ground truth and unmatched predictions "
                        "are ignored (COCO area ranges; Cityscapes' instance evaluation uses 100 px at 1024x2048)")
    p.add_argument("--true-heads", choices=TRUE_HEADS, default="none",
                   help="diagnosis: replace the learned centre and/or offset head by targets from the true "
                        "instances, to see which head limits the learned method")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", metavar="PATH", help="also write the full result as JSON")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from zoo.errors import user_errors

    cfg = InstanceEvalConfig(
        weights=list(args.weights), data=args.data, data_root=args.data_root, split=args.split,
        num_images=args.num_images, size=tuple(args.size) if args.size else None, semantic=args.semantic,
        group_overrides={k: v for k, v in (("threshold", args.threshold), ("nms_kernel", args.nms_kernel),
                                           ("vote_radius", args.vote_radius), ("split_components", args.split_components),
                                           ("min_fragment", args.min_fragment), ("min_votes", args.min_votes))
                         if v is not None},
        ws_h_abs=args.ws_h_abs, ws_h_rel=args.ws_h_rel, gap=args.gap, min_area=args.min_area,
        true_heads=args.true_heads, threads=args.threads,
        progress=not args.no_progress)
    with user_errors():
        res = run_eval(cfg)
    if args.json:
        from zoo.io import write_json

        write_json(Path(args.json), res)
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
