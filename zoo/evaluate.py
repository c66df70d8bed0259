"""Evaluate a segmentation network on a dataset split (mIoU, per-class IoU, pixel accuracy).

    python -m zoo.evaluate --model espnet --weights ../shared/weights/espnet_p_2_q_8_camvid.pth \\
        --data camvid --data-root ../shared/data/camvid --split val
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from zoo.metrics import ConfusionMatrix, SegScores


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


@dataclass
class EvalConfig:
    model: str
    data: str = "synthetic"
    data_root: str | None = None
    split: str = "val"
    weights: str | None = None
    artifacts: str | None = None
    threads: int | None = None


def run_eval(cfg: EvalConfig) -> dict:
    """Python API behind `python -m zoo.evaluate`; returns the scores as a dict."""
    from zoo import data as zdata
    from zoo.api import load_fp32

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    card = zdata.load_card(cfg.data)
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
    p.add_argument("--weights", help="checkpoint path (default: the cached FP32 checkpoint for model+data)")
    p.add_argument("--artifacts", help="artifact cache folder (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = p.parse_args(argv)
    from zoo.errors import user_errors

    with user_errors():
        res = run_eval(EvalConfig(model=args.model, data=args.data, data_root=args.data_root, split=args.split,
                                  weights=args.weights, artifacts=args.artifacts, threads=args.threads))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['model']} on {res['dataset']}/{res['split']} ({res['images']} images, weights {res['weights']})")
        print(f"mIoU {100 * res['miou']:.2f}  pixel accuracy {100 * res['pixel_accuracy']:.2f}")
        for name, iou in res["per_class_iou"].items():
            print(f"  {name:<12} {'n/a' if iou is None else f'{100 * iou:.2f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
