"""Evaluate a network on a dataset split: segmentation (mIoU, per-class IoU, pixel accuracy) or
detection (COCO mAP50-95 / mAP50 with pycocotools, per-class AP, model and NMS time per image).

    python -m zoo.evaluate --model espnet --weights ../shared/weights/espnet_p_2_q_8_camvid.pth \\
        --data camvid --data-root ../shared/data/camvid --split val
    python -m zoo.evaluate --model yolov5n --weights ../shared/weights/yolov5n.pt \\
        --data coco --data-root ../shared/data/coco-tiny --split val [--img-size 640] [--no-rect]

Detection follows YOLOv5 val.py at batch 1: long side resized to --img-size, letterboxed to the
"rect" shape of each image (--no-rect: a square), confidence 0.001, NMS IoU 0.65, 300 detections,
multi-label (--nms deploy: 0.25 / 0.45, best class), boxes mapped back to the original pixels
and scored against the dataset's COCO-format ground truth.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from tqdm import tqdm

from zoo.metrics import ConfusionMatrix, SegScores

if TYPE_CHECKING:
    from zoo.det.coco_eval import DetScores
    from zoo.det.postprocess import NMSConfig


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    dataset,
    *,
    num_classes: int,
    ignore_index: int = 255,
    classes: tuple[str, ...] = (),
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "eval",
) -> SegScores:
    """Run `model` on every item of `dataset` (items: (image CHW, label HW)) at full resolution."""
    model.eval()
    conf = ConfusionMatrix(num_classes, ignore_index)
    for image, label in tqdm(dataset, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        logits = model(image.unsqueeze(0).to(device))
        if logits.shape[-2:] != label.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        conf.update(logits.argmax(1).cpu(), label)
    return conf.scores(classes)


def _ms_stats(samples: list[float]) -> dict[str, float]:
    import statistics

    if not samples:
        return {"median": float("nan"), "mean": float("nan"), "n": 0}
    return {"median": statistics.median(samples), "mean": statistics.fmean(samples),
            "n": len(samples)}


@torch.inference_mode()
def evaluate_detector(
    model: nn.Module,
    dataset,
    *,
    nms: "NMSConfig | None" = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "eval",
    yolov5_compat: bool = False,
    save_json: str | Path | None = None,
) -> "tuple[DetScores, dict[str, Any]]":
    """COCO mAP of a detector on a `DetectionDataset` whose transform is `DetEvalTransform`.

    The model takes one (1, 3, H, W) letterboxed image and returns decoded predictions
    (1, N, 5 + nc). Returns the scores and the timings: per-image milliseconds of the network
    forward and of NMS (plus box mapping), measured apart; the first image's forward is reported
    separately (``first_model_ms``) and left out of the medians. ``yolov5_compat`` maps boxes
    back exactly as YOLOv5 does (see `zoo.det.postprocess.scale_boxes`). ``save_json`` writes
    the detections as a COCO results json.
    """
    import time

    from zoo.det.coco_eval import coco_map, detections_to_coco, write_detections
    from zoo.det.postprocess import MAP_NMS, non_max_suppression, scale_boxes

    nms = nms or MAP_NMS
    model.eval()
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    category_ids = dataset.category_ids
    dets: list[dict] = []
    image_ids: list[int] = []
    model_ms: list[float] = []
    nms_ms: list[float] = []
    for x, info, sample in tqdm(dataset, desc=desc, disable=not progress, leave=False,
                                dynamic_ncols=True):
        x = x.unsqueeze(0).to(device)
        sync()
        t0 = time.perf_counter()
        pred = model(x)
        sync()
        t1 = time.perf_counter()
        (det,) = non_max_suppression(pred, nms.conf_thres, nms.iou_thres, nms.max_det,
                                     nms.multi_label, max_nms=nms.max_nms)
        det[:, :4] = scale_boxes(det[:, :4], info, yolov5_compat=yolov5_compat)
        sync()
        t2 = time.perf_counter()
        model_ms.append(1e3 * (t1 - t0))
        nms_ms.append(1e3 * (t2 - t1))
        image_ids.append(int(sample.image_id))
        dets.extend(detections_to_coco(det, sample.image_id, category_ids))
    if save_json:
        write_detections(save_json, dets)
    scores = coco_map(dets, dataset.ground_truth(), image_ids=image_ids,
                      class_names=dataset.classes, category_ids=category_ids)
    timing = {"first_model_ms": model_ms[0] if model_ms else float("nan"),
              "model_ms": _ms_stats(model_ms[1:] or model_ms), "nms_ms": _ms_stats(nms_ms)}
    return scores, timing


@dataclass
class EvalConfig:
    model: str
    data: str = "synthetic"
    data_root: str | None = None
    split: str = "val"
    weights: str | None = None
    artifacts: str | None = None
    threads: int | None = None
    # detection only
    img_size: int | None = None  # default: the long side of the card's input_size
    rect: bool = True
    nms: str = "map"  # preset: "map" or "deploy"
    conf_thres: float | None = None  # override the preset's
    iou_thres: float | None = None
    max_det: int | None = None
    limit: int | None = None  # evaluate only the first N images (quick checks)
    device: str = "cpu"
    save_json: str | None = None  # write the COCO-format detections here
    yolov5_compat: bool = False


def _run_det_eval(cfg: EvalConfig, card, entry) -> dict:
    import dataclasses

    from zoo import data as zdata
    from zoo.api import load_fp32
    from zoo.data.letterbox import RESIZE_BACKEND, DetEvalTransform
    from zoo.det.postprocess import NMS_PRESETS
    from zoo.errors import UsageError

    if cfg.nms not in NMS_PRESETS:
        raise UsageError(f"unknown NMS preset {cfg.nms!r}; valid presets: {', '.join(NMS_PRESETS)}")
    overrides = {k: v for k, v in (("conf_thres", cfg.conf_thres), ("iou_thres", cfg.iou_thres),
                                   ("max_det", cfg.max_det)) if v is not None}
    nms = dataclasses.replace(NMS_PRESETS[cfg.nms], **overrides)
    img_size = int(cfg.img_size or max(card.input_size))
    if img_size <= 0 or img_size % 32:
        raise UsageError(f"--img-size must be a positive multiple of 32 (the detector's stride), "
                         f"got {img_size}")
    loaded = load_fp32(cfg.model, dataset=cfg.data, weights=cfg.weights, artifacts=cfg.artifacts,
                       train_if_missing=False)
    pre = zdata.Preprocess.from_dict(loaded.preprocess) if loaded.preprocess else zdata.Preprocess.from_card(card)
    ds = zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.split,
                             transform=DetEvalTransform(pre, img_size, rect=cfg.rect))
    if cfg.limit:
        ds.images = ds.images[: cfg.limit]
    model = loaded.model.to(cfg.device)
    scores, timing = evaluate_detector(model, ds, nms=nms, device=cfg.device,
                                       yolov5_compat=cfg.yolov5_compat, save_json=cfg.save_json)
    res = {"model": entry.name, "task": "detection", "dataset": cfg.data, "split": cfg.split,
           "weights": str(loaded.path), "img_size": img_size, "rect": cfg.rect,
           "resize": RESIZE_BACKEND, "yolov5_compat": cfg.yolov5_compat, "nms": nms.as_dict(),
           **scores.as_dict(), "timing": timing}
    if cfg.save_json:
        res["detections_json"] = cfg.save_json
    return res


def run_eval(cfg: EvalConfig) -> dict:
    """Python API behind `python -m zoo.evaluate`; returns the scores as a dict."""
    from zoo import data as zdata
    from zoo.api import load_fp32
    from zoo.errors import UsageError
    from zoo.registry import get_entry

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    card = zdata.load_card(cfg.data)
    entry = get_entry(cfg.model)
    if entry.task == "instance":
        raise UsageError(f"{entry.name} is an instance network, scored by PQ: use python -m zoo.instances.evaluate")
    if entry.task != card.task:
        raise UsageError(f"{entry.name} is a {entry.task} model but dataset {card.name!r} is for "
                         f"{card.task}; pick a {entry.task} dataset")
    if entry.task == "detection":
        return _run_det_eval(cfg, card, entry)
    loaded = load_fp32(cfg.model, dataset=cfg.data, weights=cfg.weights, artifacts=cfg.artifacts, train_if_missing=False)
    pre = zdata.Preprocess.from_dict(loaded.preprocess) if loaded.preprocess else zdata.Preprocess.from_card(card)
    ds = zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.split, transform=zdata.EvalTransform(pre))
    scores = evaluate_model(
        loaded.model, ds, num_classes=card.num_classes, ignore_index=card.ignore_index, classes=card.classes
    )
    return {"model": cfg.model, "dataset": cfg.data, "split": cfg.split, "weights": str(loaded.path),
            "images": len(ds), **scores.as_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--split", default="val")
    p.add_argument("--weights", help="checkpoint path (default: the best-scoring cached or trained/ FP32 weights "
                                     "for model+data)")
    p.add_argument("--artifacts", help="artifact cache folder (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    d = p.add_argument_group("detection")
    d.add_argument("--img-size", type=int, help="long side of the network input, a multiple of 32 "
                   "(default: the card's input size, 640 for coco)")
    d.add_argument("--rect", action=argparse.BooleanOptionalAction, default=True,
                   help="letterbox to each image's aspect-ratio shape as YOLOv5 val.py does "
                   "(default), or to a square with --no-rect")
    d.add_argument("--nms", default="map", choices=("map", "deploy"),
                   help="NMS preset: map (conf 0.001, IoU 0.65, multi-label) or deploy (0.25, 0.45)")
    d.add_argument("--conf", type=float, dest="conf_thres", help="override the preset's confidence threshold")
    d.add_argument("--iou", type=float, dest="iou_thres", help="override the preset's NMS IoU threshold")
    d.add_argument("--max-det", type=int, help="override the preset's detections per image (300)")
    d.add_argument("--limit", type=int, help="evaluate only the first N images")
    d.add_argument("--device", default="cpu")
    d.add_argument("--save-json", metavar="PATH", help="write the detections as a COCO results json")
    d.add_argument("--yolov5-compat", action="store_true",
                   help="map boxes back with YOLOv5's half-pixel padding quirk (reference comparisons)")
    args = p.parse_args(argv)
    from zoo.errors import user_errors

    with user_errors():
        res = run_eval(EvalConfig(model=args.model, data=args.data, data_root=args.data_root, split=args.split,
                                  weights=args.weights, artifacts=args.artifacts, threads=args.threads,
                                  img_size=args.img_size, rect=args.rect, nms=args.nms,
                                  conf_thres=args.conf_thres, iou_thres=args.iou_thres, max_det=args.max_det,
                                  limit=args.limit, device=args.device, save_json=args.save_json,
                                  yolov5_compat=args.yolov5_compat))
    if args.json:
        print(json.dumps(res, indent=2))
    elif res.get("task") == "detection":
        t = res["timing"]
        print(f"{res['model']} on {res['dataset']}/{res['split']} ({res['images']} images, {res['img_size']} "
              f"{'rect' if res['rect'] else 'square'}, weights {res['weights']})")
        print(f"mAP50-95 {res['map']:.4f}  mAP50 {res['map50']:.4f}  ({res['detections']} detections)")
        print(f"per image: model {t['model_ms']['median']:.1f} ms, NMS {t['nms_ms']['median']:.2f} ms "
              f"(medians; first forward {t['first_model_ms']:.1f} ms)")
        for name, ap in res["per_class_ap"].items():
            if ap is not None:
                print(f"  {name:<16} AP {ap:.3f}  AP50 {res['per_class_ap50'][name]:.3f}")
    else:
        print(f"{res['model']} on {res['dataset']}/{res['split']} ({res['images']} images, weights {res['weights']})")
        print(f"mIoU {100 * res['miou']:.2f}  pixel accuracy {100 * res['pixel_accuracy']:.2f}")
        for name, iou in res["per_class_iou"].items():
            print(f"  {name:<12} {'n/a' if iou is None else f'{100 * iou:.2f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
