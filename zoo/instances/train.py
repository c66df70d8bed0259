"""Train Panoptic-DeepLab-lite from semantic labels only (pseudo-instances + copy-paste).

    python -m zoo.instances.train --data synthetic --seed 0 [--epochs 60] [--resume]
    python -m zoo.train --model panoptic_lite --data synthetic      # routed here

Each training image's semantic label is split into connected components per thing class; clean
components (`zoo.instances.pseudo.CleanFilter`) get Panoptic-DeepLab targets (a Gaussian of std
`--sigma` at the mask mean and offsets to it), the other components zero weight in the centre and
offset losses; clean instances of other images are pasted next to clean ones so that the network
also sees touching objects with exact ids. The instance maps of the dataset are never read.

Loss (Panoptic-DeepLab): semantic cross-entropy over the hardest 20 % of pixels (their 3x weight
on small instances is `--small-instance-weight`, off by default: it did not help here) + 200 x
centre MSE + 0.1 x offset L1 (their 0.01 is for a 30x longer schedule; `LossWeights`), each
normalised by its weight mask.

Checkpoints: <artifacts>/checkpoints/<model>/<data>/<recipe>-seed<seed>/: `last.pt` (full state,
every --save-every seconds and at each epoch end; --resume continues mid-epoch, augmentation
included: it is seeded by (seed, epoch, image)) and `best.pt` (weights + metadata of the final
epoch; no model selection, since selecting on instance labels would leak them).
"""
from __future__ import annotations

if __name__ == "__main__":  # TCMalloc before torch loads (zoo.hardware: 1.3x faster training steps)
    from zoo.hardware import reexec_with_tcmalloc

    reexec_with_tcmalloc()

import argparse
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from zoo.checkpoints import checkpoint_dir, read_checkpoint, save_checkpoint
from zoo.data.transforms import _LUMA, _jitter_matrix
from zoo.instances.data import InstanceData, open_data
from zoo.instances.net import split_outputs
from zoo.instances.postprocess import GroupConfig
from zoo.instances.pseudo import (CleanFilter, InstanceBank, Instances, PasteConfig, connected_components,
                                  make_targets, paste_touching, pseudo_instances)
from zoo.io import write_json
from zoo.recipes import get_recipe
from zoo.registry import get_entry
from zoo.train import (EpochBatches, _build_optimizer, _lr_at, _rng_state, _seed_everything, _set_rng_state,
                       _worker_init, steps_per_epoch)


@dataclass(frozen=True)
class LossWeights:
    """Panoptic-DeepLab's loss weights (detectron2 `projects/Panoptic-DeepLab` config), except the
    offset weight: 0.1 instead of 0.01. Their schedule is 90k iterations, ours 3000; with 0.01 the
    offset head barely learned (seed 0, 30 synthetic val images, true semantic mask, image-wide
    grouping: PQ all / touching 25.9 / 13.6; 99.8 with true centres and offsets); 0.1 gave a
    little more, 28.0 / 15.0 (NOTES.md, sessions 10-11)."""

    center: float = 200.0
    offset: float = 0.1
    semantic_top_k: float = 0.2   # mean CE of the hardest 20 % of labelled pixels (1.0: plain CE)
    # Panoptic-DeepLab weights the semantic CE of pixels of small instances by 3 (detectron2:
    # INPUT.SMALL_INSTANCE_AREA 4096 px at Cityscapes' 1024x2048, SMALL_INSTANCE_WEIGHT 3). The
    # area here is the same share of the image (0.2 %) at the synthetic card's 360x480: 336 px,
    # counted on the augmented crop. The components are those of the semantic label (clean or
    # not), so no instance label is read. Off by default (1.0): measured with 3 (seed 0, 60 epochs,
    # 30 synthetic val images, NOTES.md session 12) the semantic mask got worse (mIoU 47.6; Car IoU
    # 63.6; session 10's run without it: 55 and 74) and so did the heads (tuned PQ on touching objects with
    # the true mask 37.4 vs 44.2); on the predicted mask the three methods moved within noise.
    small_instance_area: int = 336
    small_instance_weight: float = 1.0


@dataclass
class InstanceTrainConfig:
    model: str = "panoptic_lite_fastdepthseg"
    data: str = "synthetic"
    data_root: str | Path | None = None
    num_images: int | None = None         # training images to use (synthetic: generated if missing)
    size: tuple[int, int] | None = None   # synthetic image size (default: the card's 360x480)
    recipe: str | None = None             # default: the entry's ("panoptic_lite")
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    crop: tuple[int, int] | None = None
    sigma: float = 3.0                    # centre Gaussian std (px); Panoptic-DeepLab uses 8 at 1024x2048
    loss: LossWeights = field(default_factory=LossWeights)
    clean: CleanFilter = field(default_factory=CleanFilter)
    paste: PasteConfig = field(default_factory=PasteConfig)
    build_kwargs: dict[str, Any] = field(default_factory=dict)   # network builder options, e.g. instance_decoder
    seed: int = 0
    resume: bool = False
    artifacts: str | Path | None = None
    run_name: str | None = None           # default: <recipe>-seed<seed>
    workers: int = 1
    threads: int | None = None
    save_every: float = 120.0
    progress: bool = True


class PseudoInstanceSet(torch.utils.data.Dataset):
    """Training items from semantic labels: (image, semantic, semantic weight, heat, heat weight,
    offset, offset weight).

    One pass at start-up runs the clean filter on every training label (kept: a bool per
    component) and fills the copy-paste bank; items then only redo the cheap connected components.
    Randomness comes from `default_rng([seed, epoch, index])` (set `epoch` before each epoch), so
    a resumed run draws exactly the augmentations of an uninterrupted one.
    """

    def __init__(self, data: InstanceData, *, crop: tuple[int, int], scale_range: tuple[float, float],
                 sigma: float, clean: CleanFilter, paste: PasteConfig, seed: int, progress: bool = False,
                 small_instance_area: int = LossWeights.small_instance_area,
                 small_instance_weight: float = LossWeights.small_instance_weight) -> None:
        self.data = data
        self.small_instance_area = int(small_instance_area)
        self.small_instance_weight = float(small_instance_weight)
        self.crop = (int(crop[0]), int(crop[1]))
        self.scale_range = scale_range
        self.sigma = sigma
        self.paste = paste
        self.seed = seed
        self.epoch = 0
        self.bank = InstanceBank()
        self.clean_flags: list[np.ndarray] = []
        self.stats: Counter[str] = Counter()
        self._pad_rgb = tuple(int(round(v)) for v in data.preprocess.rgb_mean)
        for i in tqdm(range(len(data.dataset)), desc="pseudo-instances", disable=not progress, leave=False):
            s = data.dataset.load(i)
            inst = pseudo_instances(s.semantic, data.thing_ids, clean)
            self.clean_flags.append(inst.clean)
            self.stats.update(inst.reasons[1:])
            self.bank.add_image(s.image, inst)

    def __len__(self) -> int:
        return len(self.data.dataset)

    def _geometry(self, image: np.ndarray, sem: np.ndarray, ids: np.ndarray, rng: np.random.Generator):
        h, w = sem.shape
        ch, cw = self.crop
        s = rng.uniform(*self.scale_range)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        sem = np.asarray(Image.fromarray(sem).resize(size, Image.NEAREST))
        ids = np.asarray(Image.fromarray(ids.astype(np.int32)).resize(size, Image.NEAREST)).astype(np.int32)
        sh, sw = sem.shape
        H, W = max(sh, ch), max(sw, cw)
        if (H, W) != (sh, sw):  # pad with the mean colour / void / no instance
            py, px = int(rng.integers(0, H - sh + 1)), int(rng.integers(0, W - sw + 1))
            img_p = np.empty((H, W, 3), np.uint8)
            img_p[:] = self._pad_rgb
            sem_p = np.full((H, W), self.data.ignore_index, np.uint8)
            ids_p = np.zeros((H, W), np.int32)
            img_p[py:py + sh, px:px + sw], sem_p[py:py + sh, px:px + sw], ids_p[py:py + sh, px:px + sw] = image, sem, ids
            image, sem, ids = img_p, sem_p, ids_p
        y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
        image, sem, ids = image[y0:y0 + ch, x0:x0 + cw], sem[y0:y0 + ch, x0:x0 + cw], ids[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            image, sem, ids = image[:, ::-1], sem[:, ::-1], ids[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(sem), np.ascontiguousarray(ids)

    @staticmethod
    def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= 0.8:
            return image
        m = _jitter_matrix(rng)
        contrast = rng.uniform(0.75, 1.25)
        xf = image.reshape(-1, 3).astype(np.float32)
        mean_luma = float((xf.mean(axis=0) * _LUMA).sum())
        xf = xf @ (contrast * m.T).astype(np.float32) + np.float32((1 - contrast) * mean_luma)
        return np.clip(xf, 0, 255).reshape(image.shape)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        s = self.data.dataset.load(index)
        ids, cls = connected_components(s.semantic, self.data.thing_ids)
        flags = self.clean_flags[index]
        inst = Instances(ids=ids, classes=cls, clean=flags.copy(), reasons=[""] * len(flags))
        image, sem, inst = paste_touching(s.image, s.semantic, inst, self.bank, rng, self.paste)
        image, sem, ids = self._geometry(image, sem, inst.ids, rng)
        t = make_targets(ids, inst.clean, sigma=self.sigma, ignore=sem == self.data.ignore_index)
        x = self.data.preprocess(self._jitter(image, rng))
        sem_w = small_instance_weights(ids, self.small_instance_area, self.small_instance_weight)
        return (x, torch.from_numpy(sem.astype(np.int64)), torch.from_numpy(sem_w), torch.from_numpy(t.heat)[None],
                torch.from_numpy(t.heat_weight)[None], torch.from_numpy(t.offset), torch.from_numpy(t.offset_weight)[None])


def small_instance_weights(ids: np.ndarray, max_area: int, weight: float) -> np.ndarray:
    """Per-pixel semantic-loss weight: `weight` on instances smaller than `max_area` px, else 1."""
    area = np.bincount(ids.ravel(), minlength=1)
    small = area < max_area
    small[0] = False  # id 0 is "no instance"
    return np.where(small[ids], np.float32(weight), np.float32(1.0)).astype(np.float32)


def _check_resume(path: Path, meta: dict[str, Any], cfg: InstanceTrainConfig, recipe: Any) -> None:
    """A resumed run must continue the same experiment: refuse one whose targets, loss weights or
    schedule differ from the saved run's (they would silently mix two recipes in one checkpoint)."""
    # More epochs is allowed: extending a finished run is how a longer schedule is reached.
    # Settings added after a run was saved are compared at the value that reproduces the old
    # behaviour (no small-instance weight, no builder options).
    before = {"loss_weights": {"small_instance_weight": 1.0, "small_instance_area": LossWeights.small_instance_area},
              "build_kwargs": {}}

    def saved(key: str) -> Any:
        value = meta.get(key)
        return {**before[key], **(value or {})} if key in before else value

    def same(key: str, value: Any) -> bool:
        old, value = saved(key), json.loads(json.dumps(value))
        if key == "recipe":
            old, value = ({k: v for k, v in d.items() if k != "epochs"} for d in (old, value))
        return old == value

    now = {"sigma": cfg.sigma, "loss_weights": asdict(cfg.loss), "clean_filter": asdict(cfg.clean),
           "paste": asdict(cfg.paste), "recipe": recipe.as_dict(), "build_kwargs": dict(cfg.build_kwargs)}
    differ = [k for k, v in now.items() if (k in meta or k in before) and not same(k, v)]
    if differ:
        raise ValueError(f"--resume: {path} was trained with other {', '.join(differ)} (saved: "
                         + "; ".join(f"{k}={saved(k)}" for k in differ) + "); pass the same options, or a new --run-name")


def instance_loss(out: torch.Tensor, sem: torch.Tensor, heat: torch.Tensor, heat_w: torch.Tensor,
                  offset: torch.Tensor, offset_w: torch.Tensor, *, num_classes: int, ignore_index: int = 255,
                  weights: LossWeights = LossWeights(),
                  sem_w: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (semantic, centre, offset) for one batch.

    `sem_w` (N, H, W) weights each pixel's CE before the hard-pixel selection, as Panoptic-DeepLab
    does (`small_instance_weights`); None: all ones."""
    logits, c, o = split_outputs(out, num_classes)
    ce = F.cross_entropy(logits, sem, ignore_index=ignore_index, reduction="none")
    if sem_w is not None:
        ce = ce * sem_w
    ce = ce.flatten()
    ce = ce[(sem != ignore_index).flatten()]
    if ce.numel() == 0:
        sem_loss = logits.sum() * 0.0
    elif weights.semantic_top_k < 1.0:
        sem_loss = ce.topk(max(1, int(weights.semantic_top_k * ce.numel()))).values.mean()
    else:
        sem_loss = ce.mean()
    center = ((c - heat) ** 2 * heat_w).sum() / heat_w.sum().clamp_min(1.0)
    off = ((o - offset).abs() * offset_w).sum() / offset_w.sum().clamp_min(1.0)
    total = sem_loss + weights.center * center + weights.offset * off
    return total, {"semantic": float(sem_loss.detach()), "center": float(center.detach()), "offset": float(off.detach())}


def train(cfg: InstanceTrainConfig) -> dict[str, Any]:
    """Train (or resume); returns {"best", "last", "history", "seconds", "pseudo": stats}."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if min(cfg.loss.center, cfg.loss.offset) < 0 or not math.isfinite(cfg.loss.center + cfg.loss.offset):
        raise ValueError(f"loss weights must be finite and >= 0 (--center-weight {cfg.loss.center}, "
                         f"--offset-weight {cfg.loss.offset})")
    if not (0 < cfg.loss.small_instance_weight < math.inf) or cfg.loss.small_instance_area < 0:
        raise ValueError(f"--small-instance-weight must be finite and > 0 (got {cfg.loss.small_instance_weight}) "
                         f"and --small-instance-area >= 0 (got {cfg.loss.small_instance_area})")
    entry = get_entry(cfg.model)
    if entry.task != "instance":
        raise ValueError(f"{entry.name} is a {entry.task} network; zoo.instances.train trains instance networks")
    recipe = get_recipe(cfg.recipe or entry.default_recipe).with_overrides(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, crop=tuple(cfg.crop) if cfg.crop else None)
    data = open_data(cfg.data, root=cfg.data_root, split="train", num_images=cfg.num_images, size=cfg.size,
                     progress=cfg.progress)
    t0 = time.time()
    train_set = PseudoInstanceSet(data, crop=recipe.crop, scale_range=recipe.scale_range, sigma=cfg.sigma,
                                  clean=cfg.clean, paste=cfg.paste, seed=cfg.seed, progress=cfg.progress,
                                  small_instance_area=cfg.loss.small_instance_area,
                                  small_instance_weight=cfg.loss.small_instance_weight)
    pseudo = {"components": dict(train_set.stats), "bank": {data.classes[c]: len(v) for c, v in train_set.bank.by_class.items()},
              "seconds": round(time.time() - t0, 1)}
    n_steps = steps_per_epoch(len(train_set), recipe.batch_size, 1)
    if n_steps == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {recipe.batch_size}")
    total_iters = recipe.epochs * n_steps

    _seed_everything(cfg.seed)
    model = entry.build(num_classes=data.num_classes, **cfg.build_kwargs)
    optimizer = _build_optimizer(model, recipe)
    run = cfg.run_name or f"{recipe.name}-seed{cfg.seed}"
    out_dir = checkpoint_dir(entry.name, cfg.data, run, cfg.artifacts)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    start_epoch, start_step, history = 0, 0, []
    if cfg.resume and last_path.is_file():
        state = read_checkpoint(last_path)
        _check_resume(last_path, state.get("meta") or {}, cfg, recipe)
        model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:  # a portable copy (python -m zoo.checkpoints portable), e.g. from trained/
            print(f"[instances] {last_path} has no optimizer state (portable copy): optimizer moments restart",
                  file=sys.stderr)
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        history = json.loads(state.get("history", "[]"))
        _set_rng_state(state["rng"])
        print(f"[instances] resuming {last_path} at epoch {start_epoch + 1}, step {start_step}/{n_steps}", file=sys.stderr)
    meta_base = {
        "model": entry.name, "family": entry.family, "task": "instance", "dataset": cfg.data,
        "build_kwargs": dict(cfg.build_kwargs),
        "classes": list(data.classes), "num_classes": data.num_classes, "thing_ids": list(data.thing_ids),
        "thing_classes": list(data.thing_names), "recipe": recipe.as_dict(), "seed": cfg.seed,
        "train_images": len(train_set), "size": list(cfg.size) if cfg.size else None,
        "sigma": cfg.sigma, "loss_weights": asdict(cfg.loss), "clean_filter": asdict(cfg.clean),
        "paste": asdict(cfg.paste), "group": GroupConfig().as_dict(), "pseudo_instances": pseudo,
        "preprocess": data.preprocess.to_dict(), "supervision": "semantic labels only (pseudo-instances)",
    }

    def save_last(epoch: int, step: int) -> None:
        save_checkpoint(last_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "step_in_epoch": step, "history": json.dumps(history), "rng": _rng_state(),
            "meta": {**meta_base, "epoch": epoch, "step_in_epoch": step},
        })

    t_start, last_save = time.time(), time.time()
    prior_s = float(history[-1]["elapsed_s"]) if history else 0.0
    kill_at = int(os.environ["EDGEZOO_FAULT_KILL_AT_STEP"]) if os.environ.get("EDGEZOO_FAULT_KILL_AT_STEP") else None
    lr = recipe.lr
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        train_set.epoch = epoch
        first = start_step if epoch == start_epoch else 0
        sampler = EpochBatches(len(train_set), recipe.batch_size, seed=cfg.seed, epoch=epoch, start=first)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers, worker_init_fn=_worker_init)
        bar = tqdm(loader, total=n_steps, initial=first, disable=not cfg.progress, dynamic_ncols=True,
                   desc=f"{entry.name} epoch {epoch + 1}/{recipe.epochs}")
        running: dict[str, float] = {}
        for step, (x, sem, sem_w, heat, heat_w, off, off_w) in enumerate(bar, start=first):
            lr = _lr_at(recipe, epoch * n_steps + step, total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, parts = instance_loss(model(x), sem, heat, heat_w, off, off_w, num_classes=data.num_classes,
                                        ignore_index=data.ignore_index, weights=cfg.loss, sem_w=sem_w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at epoch {epoch + 1} step {step}; lower --lr")
            parts["loss"] = value
            running = {k: v if k not in running else 0.9 * running[k] + 0.1 * v for k, v in parts.items()}
            bar.set_postfix({k: f"{v:.3g}" for k, v in running.items()})
            if time.time() - last_save > cfg.save_every:
                save_last(epoch, step + 1)
                last_save = time.time()
            if kill_at is not None and epoch * n_steps + step + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection (as in zoo.train): die mid-epoch
        bar.close()
        history.append({"epoch": epoch + 1, **running, "lr": lr, "elapsed_s": prior_s + time.time() - t_start})
        if not cfg.progress:
            print(f"[instances] epoch {epoch + 1}/{recipe.epochs} " + " ".join(f"{k} {v:.4g}" for k, v in running.items())
                  + f" elapsed {history[-1]['elapsed_s'] / 60:.1f} min", file=sys.stderr, flush=True)
        save_last(epoch + 1, 0)
        last_save = time.time()
    seconds = prior_s + time.time() - t_start
    save_checkpoint(best_path, {"model": model.state_dict(), "meta": {
        **meta_base, "epoch": recipe.epochs, "train_seconds": seconds,
        "selection": "final epoch (no model selection: validation would need instance labels)"}})
    write_json(out_dir / "history.json", history)
    return {"best": best_path, "last": last_path, "history": history, "seconds": seconds, "pseudo": pseudo}


def find_checkpoint(model: str, data: str, artifacts: str | Path | None = None, *, seed: int = 0) -> Path | None:
    """The cached `best.pt` that `train` writes for (model, data) under its default run name
    (``<recipe>-seed<seed>``): the family recipe's first, then the quick recipe's; None if neither."""
    entry = get_entry(model)
    for recipe in dict.fromkeys((entry.default_recipe, "quick")):
        path = checkpoint_dir(entry.name, data, f"{recipe}-seed{seed}", artifacts) / "best.pt"
        if path.is_file():
            return path
    return None


def build_parser(prog: str = "python -m zoo.instances.train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="panoptic_lite_fastdepthseg")
    p.add_argument("--data", default="synthetic", help="synthetic (default), synthetic-lt, or coco (with --data-root)")
    p.add_argument("--data-root")
    p.add_argument("--num-images", type=int, help="training images (synthetic: that many per split)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="synthetic image size")
    p.add_argument("--recipe")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--sigma", type=float, default=3.0, help="centre Gaussian std in pixels")
    p.add_argument("--center-weight", type=float, default=LossWeights.center,
                   help="weight of the centre-heat MSE (default %(default)s, Panoptic-DeepLab's)")
    p.add_argument("--offset-weight", type=float, default=LossWeights.offset,
                   help="weight of the offset L1 in pixels (default %(default)s, Panoptic-DeepLab's)")
    p.add_argument("--small-instance-weight", type=float, default=LossWeights.small_instance_weight,
                   help="semantic-CE weight of pixels of instances under --small-instance-area px "
                        "(default %(default)s: off; Panoptic-DeepLab uses 3)")
    p.add_argument("--small-instance-area", type=int, default=LossWeights.small_instance_area,
                   help="area in px, on the augmented crop (default %(default)s: Panoptic-DeepLab's 4096 at "
                        "1024x2048 scaled to 360x480)")
    p.add_argument("--instance-decoder", action="store_true",
                   help="a decoder of their own for the centre and offset heads (Panoptic-DeepLab's dual decoders)")
    p.add_argument("--paste-prob", type=float, default=PasteConfig.prob, help="copy-paste probability per image (0: off)")
    p.add_argument("--min-solidity", type=float, default=CleanFilter.min_solidity)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from last.pt if it exists")
    p.add_argument("--artifacts")
    p.add_argument("--run-name", help="checkpoint folder name (default <recipe>-seed<seed>)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--save-every", type=float, default=120.0)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m zoo.instances.train") -> int:
    args = build_parser(prog).parse_args(argv)
    from zoo.errors import user_errors

    cfg = InstanceTrainConfig(
        model=args.model, data=args.data, data_root=args.data_root, num_images=args.num_images,
        size=tuple(args.size) if args.size else None, recipe=args.recipe, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, crop=tuple(args.crop) if args.crop else None, sigma=args.sigma,
        loss=LossWeights(center=args.center_weight, offset=args.offset_weight,
                         small_instance_area=args.small_instance_area, small_instance_weight=args.small_instance_weight),
        clean=CleanFilter(min_solidity=args.min_solidity), paste=PasteConfig(prob=args.paste_prob), seed=args.seed,
        build_kwargs={"instance_decoder": True} if args.instance_decoder else {},
        resume=args.resume, artifacts=args.artifacts, run_name=args.run_name, workers=args.workers,
        threads=args.threads, save_every=args.save_every, progress=not args.no_progress)
    with user_errors():
        try:
            res = train(cfg)
        except (KeyError, ValueError) as exc:
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
    print(f"checkpoint {res['best']}; {res['seconds'] / 60:.1f} min; pseudo-instances {res['pseudo']['components']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
