"""Training and fine-tuning of a YOLOv5 detector on a detection dataset.

Examples:
    python -m zoo.det.train --model yolov5n --data synthetic-det --recipe quick
    python -m zoo.train --model yolov5n --data synthetic-det --recipe quick     (same: zoo.train
        hands detection models to this trainer)
    python -m zoo.det.train --model yolov5n --data mydata --data-root path/to/yolo_folder \\
        --weights ../shared/weights/yolov5n.pt --epochs 50 [--class-weights effective]
    torchrun --nproc_per_node=2 -m zoo.det.train --model yolov5n --data synthetic-det --recipe quick

A user's own data: a detection card ``datasets/<name>.yaml`` (``task: detection``, ``format:
yolo`` or ``coco``, the class names; see datasets/README.md) and ``--data-root`` pointing at
the YOLO or COCO folder.

The optimisation follows ultralytics/yolov5 ``train.py`` (facts only; our own code): SGD with
nesterov momentum 0.937 and three parameter groups (biases, conv weights with weight decay
5e-4 x batch x accumulate / 64, normalisation weights), gradients accumulated up to a nominal
batch of 64, warm-up over max(3 epochs, 100 iterations) in which the bias lr falls from 0.1 and
the other lrs rise from 0 to lr0 x lf(epoch) while momentum rises from 0.8, then a per-epoch
linear (or one-cycle cosine) decay to lr0 x lrf, gradient norm clipped at 10, and an EMA of the
weights (`ModelEMA`) that is what gets validated (COCO mAP50-95 with pycocotools through
`zoo.evaluate.evaluate_detector`) and saved as ``best.pt``. The loss is `zoo.det.loss.YOLOv5Loss`,
the data pipeline `zoo.det.augment`. Recipes: `zoo.recipes.DET_RECIPES`.

Checkpoints go to <artifacts>/checkpoints/<model>/<data>/<recipe>/: ``last.pt`` (full training
state: weights, EMA, optimizer, position, RNG; written every --save-every seconds after an
optimizer step and at each epoch end, so a killed run resumes mid-epoch with --resume) and
``best.pt`` (EMA weights + metadata of the best validation mAP50-95), each with a JSON sidecar.

Fine-tuning (--weights PATH: an official ultralytics ``.pt`` or a zoo checkpoint, read through
`zoo.checkpoints.load_weights`): every tensor whose shape fits is kept. When the dataset's
classes differ from the checkpoint's, the Detect head's 1x1 convs keep, for each anchor, the
box (4) and objectness (1) output channels; a class channel is copied when a checkpoint class
has the same name (case-insensitive, e.g. COCO "car" -> "Car") and otherwise starts afresh
(default init and the class-prior bias). The reference instead drops the whole head.
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
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from zoo.checkpoints import checkpoint_dir, load_weights, read_checkpoint, save_checkpoint
from zoo.det.augment import AugmentConfig, DetTrainDataset, detection_collate
from zoo.det.loss import LossHyp, YOLOv5Loss
from zoo.recipes import DetRecipe, get_det_recipe
from zoo.registry import ModelEntry, get_entry
from zoo.train import (EpochBatches, TrainHooks, _dist_info, early_stop_reached, finish_run, observers_paused, patience_arg,
                       _rng_state, _seed_everything, _set_rng_state, _worker_init, steps_per_epoch)


@dataclass
class DetTrainConfig:
    model: str
    data: str = "synthetic-det"
    data_root: str | Path | None = None
    recipe: str | None = None            # default: the family's recipe ("yolov5")
    epochs: int | None = None            # overrides of the recipe
    batch_size: int | None = None
    lr: float | None = None
    img_size: int | None = None
    eval_every: int | None = None
    patience: int | None = None          # stop after this many validations in a row without a new best
    weights: str | Path | None = None    # fine-tune from this checkpoint
    class_weights: str | None = None     # none|effective|inverse|median|enet, counts = boxes per class
    beta: float | None = None            # effective-number beta (None: zoo.class_weights.default_beta)
    seed: int = 0
    resume: bool = False
    artifacts: str | Path | None = None
    run_name: str | None = None          # checkpoint folder name (default: the recipe's name)
    workers: int = 1
    threads: int | None = None
    save_every: float = 120.0            # seconds between mid-epoch `last.pt` saves
    amp: str = "none"                    # "bf16": autocast the forward to bfloat16
    progress: bool = True
    train_split: str = "train"
    val_split: str = "val"
    val_limit: int | None = None         # validate on the first N images only
    overrides: dict[str, Any] = field(default_factory=dict)  # any other DetRecipe field


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------

class ModelEMA:
    """Exponential moving average of the parameters and BatchNorm statistics, decay
    ``d = decay * (1 - exp(-updates / tau))``: it ramps up from 0 so the early, fast-changing
    weights are not averaged in for long (the reference's ``ModelEMA``, after timm's).

    Every other state-dict entry is copied from the model at each update: constant buffers
    (anchors, BN batch counters) and, in a quantization-aware graph, the fake quantizers' scales,
    zero points, observed ranges and on/off flags, so the EMA runs on the quantization grid the
    model trains against (an averaged integer zero point or on/off flag would mean nothing)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0,
                 updates: int = 0) -> None:
        self.ema = deepcopy(getattr(model, "module", model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = float(decay), float(tau), int(updates)
        self.averaged = {name for name, _ in self.ema.named_parameters()} | {
            f"{prefix}.{stat}" if prefix else stat for prefix, m in self.ema.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) for stat in ("running_mean", "running_var")}

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        src = getattr(model, "module", model).state_dict()
        for k, v in self.ema.state_dict().items():
            if k in self.averaged:
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
        self.sync(model)

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        """Copy the entries that are not averaged (also before validation: quantizer ranges move
        with every forward, and a short QAT run may not have reached its first optimizer step)."""
        src = getattr(model, "module", model).state_dict()
        # load_state_dict rather than copy_: per-channel observers size their buffers at their
        # first batch, and their own loaders resize the EMA's to fit.
        self.ema.load_state_dict({k: v for k, v in src.items() if k not in self.averaged}, strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def build_optimizer(model: nn.Module, recipe: DetRecipe, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (nesterov; or AdamW with beta1 = momentum, as the reference's ``--optimizer AdamW``)
    with the reference's three groups, in this order: biases (no decay; the warm-up starts their
    lr high), conv/linear weights (``weight_decay``), normalisation-layer weights (no decay).
    Each group carries a "name"."""
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    biases, weights, norms = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                biases.append(p)
            elif isinstance(module, norm_types):
                norms.append(p)
            else:
                weights.append(p)
    groups = [{"params": biases, "weight_decay": 0.0, "name": "bias"},
              {"params": weights, "weight_decay": weight_decay, "name": "weight"},
              {"params": norms, "weight_decay": 0.0, "name": "norm"}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999))
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; valid: sgd, adamw")


def lr_factor(recipe: DetRecipe, epoch: int) -> float:
    """lf(epoch): 1 -> lrf, linearly or along a half cosine ("one cycle")."""
    x, n, lrf = epoch, recipe.epochs, recipe.lrf
    if recipe.lr_schedule == "cos":
        return ((1 - math.cos(x * math.pi / n)) / 2) * (lrf - 1) + 1
    if recipe.lr_schedule == "linear":
        return (1 - x / n) * (1.0 - lrf) + lrf
    raise ValueError(f"unknown lr schedule {recipe.lr_schedule!r}; valid: linear, cos")


def class_box_counts(dataset: Any, num_classes: int) -> np.ndarray:
    """Ground-truth boxes per class over a `DetectionDataset` (reads labels, not images)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(len(dataset)):
        _, classes = dataset.targets(i)
        if len(classes):
            counts += np.bincount(np.asarray(classes, dtype=np.int64), minlength=num_classes)[:num_classes]
    return counts


def detection_class_weights(dataset: Any, num_classes: int, method: str | None,
                            beta: float | None = None) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Per-class weights for the class BCE from boxes per class (`zoo.class_weights`), normalised
    to sum to the number of classes, and a description for the checkpoint metadata."""
    from zoo.class_weights import METHODS, compute_weights, default_beta

    method = method or "none"
    if method not in METHODS:
        raise ValueError(f"unknown class-weight method {method!r}; valid: {', '.join(METHODS)}")
    if method == "none":
        return None, {"method": "none"}
    counts = class_box_counts(dataset, num_classes)
    if method == "effective" and beta is None:
        beta = default_beta(counts)
    w = torch.as_tensor(compute_weights(method, counts, beta=beta), dtype=torch.float32)
    return w, {"method": method, "beta": beta if method == "effective" else None,
               "count_source": "boxes", "counts": counts.tolist(),
               "weights": [round(float(x), 6) for x in w]}


def _detect_prefix(model: nn.Module) -> str:
    detect = model.detect
    return next(name for name, m in model.named_modules() if m is detect)


def transfer_weights(src: nn.Module, dst: nn.Module, src_classes: Sequence[str] | None,
                     dst_classes: Sequence[str]) -> dict[str, Any]:
    """Load ``src``'s weights into ``dst`` (another class count or class list); see the module
    docstring. Returns what was kept, matched and re-initialised."""
    s_sd, d_sd = src.state_dict(), dst.state_dict()
    sd, dd = src.detect, dst.detect
    if (sd.na, sd.nl) != (dd.na, dd.nl):
        raise ValueError(f"cannot transfer a head of {sd.nl} levels x {sd.na} anchors to "
                         f"{dd.nl} x {dd.na}")
    by_name = {str(n).strip().lower(): i for i, n in enumerate(src_classes or ())}
    matches = {j: by_name[str(n).strip().lower()] for j, n in enumerate(dst_classes)
               if str(n).strip().lower() in by_name}
    prefix = _detect_prefix(dst)
    head = {f"{prefix}.m.{i}.{p}" for i in range(dd.nl) for p in ("weight", "bias")}
    new, skipped = {}, []
    for k, v in d_sd.items():
        s = s_sd.get(k)
        if k in head and s is not None:
            sv = s.reshape(sd.na, sd.no, -1)
            dv = v.clone().reshape(dd.na, dd.no, -1)
            dv[:, :5] = sv[:, :5]  # box and objectness
            for j, i in matches.items():
                dv[:, 5 + j] = sv[:, 5 + i]
            new[k] = dv.reshape(v.shape)
        elif s is not None and s.shape == v.shape:
            new[k] = s
        else:
            new[k] = v
            skipped.append(k)
    dst.load_state_dict(new)
    return {"head": "box and objectness channels kept; class channels "
                    + ("copied by name where the names match, others re-initialised" if matches
                       else "re-initialised"),
            "matched_classes": {str(dst_classes[j]): str(src_classes[i]) for j, i in matches.items()},
            "reinitialised_classes": [str(c) for j, c in enumerate(dst_classes) if j not in matches],
            "skipped_keys": skipped}


def init_from_weights(entry: ModelEntry, path: str | Path, num_classes: int,
                      classes: Sequence[str]
                      ) -> tuple[nn.Module, dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
    """(model for ``num_classes``, the checkpoint's preprocess or None, a description, the
    builder options the checkpoint records) for fine-tuning from ``path``."""
    loaded = load_weights(entry, path, num_classes=num_classes)
    build_kwargs = dict(loaded.meta.get("build_kwargs") or {})
    src_classes = loaded.meta.get("classes")
    info: dict[str, Any] = {"path": str(path), "sha256": loaded.sha256,
                            "source_num_classes": loaded.num_classes,
                            "source": loaded.meta.get("source") or loaded.meta.get("dataset")}
    same_names = src_classes is None or [str(c).lower() for c in src_classes] == [str(c).lower() for c in classes]
    if loaded.num_classes == num_classes and same_names:
        info["head"] = "kept (same classes)"
        return loaded.model, loaded.preprocess, info, build_kwargs
    model = entry.build(num_classes=num_classes, **build_kwargs)
    info.update(transfer_weights(loaded.model, model, src_classes, classes))
    return model, loaded.preprocess, info, build_kwargs


def _setup_device(cfg: DetTrainConfig, distributed: bool, world: int) -> torch.device:
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available()
              else torch.device("cpu"))
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif distributed and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return device


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------

def train_detector(cfg: DetTrainConfig, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train (or resume, or fine-tune) and return {"best", "last", "best_map", "history", "seconds"}.

    `hooks` are `zoo.train.TrainHooks`, as for segmentation (quantization-aware fine-tuning plugs
    in here): `prepare_model` replaces the built (and, with --weights, initialised) network before
    the optimizer and the EMA see it; the loss and the metadata take the anchors and the class
    count from the network as built, since a prepared graph need not keep the `Detect` module."""
    from zoo import data as zdata
    from zoo.data.letterbox import DetEvalTransform
    from zoo.det.postprocess import MAP_NMS
    from zoo.evaluate import evaluate_detector

    hooks = hooks or TrainHooks()
    rank, world = _dist_info()
    distributed = world > 1
    device = _setup_device(cfg, distributed, world)
    is_main = rank == 0

    entry = get_entry(cfg.model)
    card = zdata.load_card(cfg.data)
    if entry.task != "detection" or card.task != "detection":
        raise ValueError(f"the detection trainer needs a detection model and dataset; got "
                         f"{entry.name} ({entry.task}) on {card.name} ({card.task})")
    base_recipe = get_det_recipe(cfg.recipe or entry.default_recipe)
    unknown = sorted(set(cfg.overrides) - set(base_recipe.as_dict()) | set(cfg.overrides) & {"name"})
    if unknown:
        raise ValueError(f"unknown detection recipe field(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(k for k in base_recipe.as_dict() if k != 'name')}")
    recipe = base_recipe.with_overrides(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, img_size=cfg.img_size,
        eval_every=cfg.eval_every, **cfg.overrides)
    if recipe.img_size <= 0 or recipe.img_size % 32:
        raise ValueError(f"image size must be a positive multiple of 32 (the stride), got {recipe.img_size}")
    if recipe.batch_size % world:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by the {world} processes")
    per_rank_batch = recipe.batch_size // world
    nc = card.num_classes

    out_dir = checkpoint_dir(entry.name, cfg.data, cfg.run_name or hooks.run_name or recipe.name, cfg.artifacts)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    resuming = cfg.resume and last_path.is_file()
    state = read_checkpoint(last_path) if resuming else None

    _seed_everything(cfg.seed)
    init_info: dict[str, Any] = {"weights": "scratch"}
    build_kwargs: dict[str, Any] = dict(hooks.build_kwargs)
    ckpt_pre = None
    if state is not None:
        build_kwargs = dict(state["meta"].get("build_kwargs") or {})
        ckpt_pre = state["meta"].get("preprocess")
        init_info = state["meta"].get("init", init_info)
        model = entry.build(num_classes=nc, **build_kwargs)
    elif cfg.weights:
        model, ckpt_pre, init_info, ckpt_kwargs = init_from_weights(entry, cfg.weights, nc, card.classes)
        clash = {k: v for k, v in build_kwargs.items() if ckpt_kwargs.get(k, v) != v}
        if clash:
            raise ValueError(f"builder options {clash} differ from those of {cfg.weights} ({ckpt_kwargs})")
        build_kwargs = {**ckpt_kwargs, **build_kwargs}
        if is_main:
            print(f"[det-train] fine-tuning from {cfg.weights}: head {init_info['head']}", file=sys.stderr)
    else:
        model = entry.build(num_classes=nc, **build_kwargs)
    head = model.detect  # anchors, levels, classes: what the loss and the metadata need
    if hooks.prepare_model is not None:
        model = hooks.prepare_model(model)
    model = model.to(device).train()
    pre = zdata.Preprocess.from_dict(ckpt_pre) if ckpt_pre else zdata.Preprocess.from_card(card)

    train_base = zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.train_split)
    train_set = DetTrainDataset(train_base, recipe.img_size, pre, AugmentConfig.from_mapping(recipe))
    n_steps = steps_per_epoch(len(train_set), per_rank_batch, world)
    if n_steps == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {recipe.batch_size}")
    val_set = None
    if is_main:
        val_set = zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.val_split,
                                      transform=DetEvalTransform(pre, recipe.img_size, rect=True))
        if cfg.val_limit:
            val_set.images = val_set.images[: cfg.val_limit]

    weight, weighting = detection_class_weights(train_base, nc, cfg.class_weights, cfg.beta)
    if weight is not None and is_main:
        from zoo.class_weights import describe
        print(f"[det-train] class weights ({weighting['method']}, boxes): {describe(weight, card.classes)}",
              file=sys.stderr, flush=True)
    hyp = LossHyp(box=recipe.box, obj=recipe.obj, cls=recipe.cls, anchor_t=recipe.anchor_t,
                  label_smoothing=recipe.label_smoothing).scaled(
        num_classes=nc, img_size=recipe.img_size, num_levels=head.nl)
    criterion = YOLOv5Loss(head.anchors, head.nc, hyp, class_weights=weight).to(device)

    nbs = recipe.nbs or recipe.batch_size
    accumulate = max(round(nbs / recipe.batch_size), 1)
    weight_decay = recipe.weight_decay * recipe.batch_size * accumulate / nbs
    optimizer = build_optimizer(model, recipe, weight_decay)
    ema = ModelEMA(model, recipe.ema_decay, recipe.ema_tau) if is_main else None

    start_epoch, start_step, best_map, history, last_opt_step = 0, 0, -1.0, [], -1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        best_map, history = state.get("best_map", -1.0), json.loads(state.get("history", "[]"))
        last_opt_step = int(state.get("last_opt_step", -1))
        accumulate = int(state.get("accumulate", accumulate))
        _set_rng_state(state["rng"])
        if is_main:
            print(f"[det-train] resuming {last_path} at epoch {start_epoch + 1}, step {start_step}/{n_steps}",
                  file=sys.stderr)
    elif cfg.resume and is_main:
        print(f"[det-train] --resume: no {last_path} yet, starting from scratch", file=sys.stderr)

    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    anchors_px = (head.anchors.cpu() * torch.tensor(head.strides).view(-1, 1, 1)).tolist()
    meta_base = {
        "model": entry.name, "family": entry.family, "task": "detection", "dataset": cfg.data,
        "classes": list(card.classes), "num_classes": nc, "recipe": recipe.as_dict(),
        "img_size": recipe.img_size, "loss_hyp": hyp.as_dict(),
        "accumulate_max": max(round(nbs / recipe.batch_size), 1),
        "weight_decay_effective": weight_decay, "seed": cfg.seed, "world_size": world, "amp": cfg.amp,
        "class_weighting": weighting, "preprocess": pre.to_dict(), "build_kwargs": build_kwargs,
        "anchors": anchors_px, "init": init_info, **hooks.meta,
    }

    def save_last(epoch: int, step: int) -> None:
        if not is_main:
            return
        save_checkpoint(last_path, {
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "step_in_epoch": step, "best_map": best_map, "history": json.dumps(history),
            "last_opt_step": last_opt_step, "accumulate": accumulate, "rng": _rng_state(),
            "meta": {**meta_base, "epoch": epoch, "step_in_epoch": step},
        })

    if hooks.evaluate_first and state is None:
        # "Epoch 0": the prepared (QAT: calibrated) network before any step, kept as best.pt unless
        # a fine-tuned epoch beats it. The EMA is still an exact copy of the model here.
        if is_main:
            t0 = time.time()
            with observers_paused(ema.ema):
                scores, _ = evaluate_detector(ema.ema, val_set, nms=MAP_NMS, device=device,
                                              progress=cfg.progress, desc=f"val {cfg.val_split}")
            best_map = scores.map
            save_checkpoint(best_path, {"model": ema.ema.state_dict(), "meta": {
                **meta_base, "epoch": 0, "metrics": scores.as_dict(), "split": cfg.val_split,
                "val_images": scores.images, "ema_updates": ema.updates, "train_seconds": 0.0}})
            history.append({"epoch": 0, "loss": None, "lr": 0.0, "elapsed_s": time.time() - t0, "amp": cfg.amp,
                            "map": scores.map, "map50": scores.map50})
            print(f"[det-train] epoch 0 (before training): val mAP50-95 {scores.map:.4f} mAP50 {scores.map50:.4f}",
                  file=sys.stderr, flush=True)
        if distributed:
            dist.barrier()

    nb = n_steps
    n_warmup = max(round(recipe.warmup_epochs * nb), recipe.warmup_min_iters) if recipe.warmup_epochs > 0 else 0
    base_lr = recipe.lr
    t_start, last_save = time.time(), time.time()
    prior_s = float(history[-1]["elapsed_s"]) if history else 0.0
    kill_at = int(os.environ["EDGEZOO_FAULT_KILL_AT_STEP"]) if os.environ.get("EDGEZOO_FAULT_KILL_AT_STEP") else None
    lr_now = base_lr
    # A resumed run that had already stopped early stays stopped (zoo.train.early_stop_reached).
    stopped = early_stop_reached(history, cfg.patience, key="map", distributed=distributed) if start_step == 0 else None
    if stopped is not None and start_epoch < recipe.epochs:
        meta_base["early_stop"] = stopped
        save_last(start_epoch, 0)
    for epoch in range(start_epoch, recipe.epochs if stopped is None else start_epoch):
        model.train()
        if hooks.on_epoch_start is not None:
            hooks.on_epoch_start(model, epoch, recipe.epochs)
        optimizer.zero_grad(set_to_none=True)  # an unfinished accumulation does not cross epochs
        epoch_lr = base_lr * lr_factor(recipe, epoch)
        first = start_step if epoch == start_epoch else 0
        sampler = EpochBatches(len(train_set), per_rank_batch, seed=cfg.seed, epoch=epoch, rank=rank,
                               world=world, start=first)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers,
                            collate_fn=detection_collate, persistent_workers=False,
                            worker_init_fn=_worker_init)
        bar = tqdm(loader, total=nb, initial=first, disable=not (cfg.progress and is_main), dynamic_ncols=True,
                   desc=f"{entry.name} epoch {epoch + 1}/{recipe.epochs}")
        mloss, seen = torch.zeros(3), 0
        for step, (images, targets) in enumerate(bar, start=first):
            ni = epoch * nb + step
            if ni <= n_warmup and n_warmup > 0:
                xi = [0, n_warmup]
                accumulate = max(1, int(np.interp(ni, xi, [1, nbs / recipe.batch_size]).round()))
                for g in optimizer.param_groups:
                    start_lr = recipe.warmup_bias_lr if g["name"] == "bias" else 0.0
                    g["lr"] = float(np.interp(ni, xi, [start_lr, epoch_lr]))
                    if "momentum" in g:  # SGD only, as in the reference
                        g["momentum"] = float(np.interp(ni, xi, [recipe.warmup_momentum, recipe.momentum]))
            else:
                for g in optimizer.param_groups:
                    g["lr"] = epoch_lr
                    if "momentum" in g:
                        g["momentum"] = recipe.momentum
            lr_now = optimizer.param_groups[1]["lr"]
            images, targets = images.to(device, non_blocking=True), targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                maps = net(images)
            loss, parts = criterion([m.float() for m in maps], targets)
            if distributed:
                loss = loss * world  # DDP averages gradients over processes; the loss is a sum over images
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at epoch {epoch + 1} step {step}; lower --lr")
            stepped = ni - last_opt_step >= accumulate
            if stepped:
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), max_norm=recipe.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                last_opt_step = ni
            mloss = (mloss * seen + parts.cpu()) / (seen + 1)
            seen += 1
            bar.set_postfix(box=f"{mloss[0]:.4f}", obj=f"{mloss[1]:.4f}", cls=f"{mloss[2]:.4f}",
                            inst=int(targets.shape[0]), lr=f"{lr_now:.2e}")
            if stepped and time.time() - last_save > cfg.save_every:
                save_last(epoch, step + 1)
                last_save = time.time()
            if kill_at is not None and ni + 1 == kill_at:
                # Fault injection for the resume test: die like `kill -9` would, mid-epoch.
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        done = epoch + 1
        record: dict[str, Any] = {"epoch": done, "box": float(mloss[0]), "obj": float(mloss[1]),
                                  "cls": float(mloss[2]), "loss": float(mloss.sum()), "lr": lr_now,
                                  "elapsed_s": prior_s + time.time() - t_start, "amp": cfg.amp}
        if done % recipe.eval_every == 0 or done == recipe.epochs:
            if is_main:
                ema.sync(model)
                with observers_paused(ema.ema):
                    scores, _ = evaluate_detector(ema.ema, val_set, nms=MAP_NMS, device=device,
                                                  progress=cfg.progress, desc=f"val {cfg.val_split}")
                record.update(map=scores.map, map50=scores.map50)
                if scores.map > best_map:
                    best_map = scores.map
                    save_checkpoint(best_path, {"model": ema.ema.state_dict(), "meta": {
                        **meta_base, "epoch": done, "metrics": scores.as_dict(), "split": cfg.val_split,
                        "val_images": scores.images, "ema_updates": ema.updates,
                        "train_seconds": record["elapsed_s"]}})
                print(f"[det-train] epoch {done}: val mAP50-95 {scores.map:.4f} mAP50 {scores.map50:.4f} "
                      f"(best {best_map:.4f}), loss {record['loss']:.4f}", file=sys.stderr, flush=True)
        if is_main and not cfg.progress:
            print(f"[det-train] epoch {done}/{recipe.epochs} box {record['box']:.4f} obj {record['obj']:.4f} "
                  f"cls {record['cls']:.4f} lr {lr_now:.2e} elapsed {record['elapsed_s'] / 60:.1f} min",
                  file=sys.stderr, flush=True)
        history.append(record)
        stopped = early_stop_reached(history, cfg.patience, key="map", distributed=distributed)
        if stopped is not None:
            meta_base["early_stop"] = stopped
            if is_main:
                print(f"[det-train] early stop after epoch {done}: {cfg.patience} validations without beating "
                      f"epoch {stopped['best_epoch']} ({stopped['map']:.4f})", file=sys.stderr, flush=True)
        save_last(done, 0)
        last_save = time.time()
        if distributed:
            dist.barrier()
        if stopped is not None:
            break
    finish_run(out_dir, history, is_main=is_main, distributed=distributed)
    return {"best": best_path, "last": last_path, "best_map": best_map, "history": history,
            "seconds": prior_s + time.time() - t_start}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def build_parser(prog: str = "python -m zoo.det.train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="detection network (see python -m zoo.list)")
    p.add_argument("--data", default="synthetic-det", help="detection dataset card (default synthetic-det)")
    p.add_argument("--data-root", help="dataset folder (default: the card's default root)")
    p.add_argument("--recipe", help="detection recipe: yolov5 (default, the reference's) or quick")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--img-size", type=int, help="square training / validation size (multiple of 32)")
    p.add_argument("--eval-every", type=int, help="epochs between validation runs")
    p.add_argument("--patience", type=patience_arg, metavar="N",
                   help="stop early after N validations in a row without a new best (default: never)")
    p.add_argument("--weights", help="fine-tune from this checkpoint (official .pt or a zoo checkpoint)")
    p.add_argument("--class-weights", choices=("none", "effective", "inverse", "median", "enet"),
                   help="per-class weights on the class loss from boxes per class (default none)")
    p.add_argument("--beta", type=float, help="class-balanced beta (default: 1 - 1/largest box count)")
    p.add_argument("--mosaic", type=float, metavar="P", help="mosaic probability (recipe's by default)")
    p.add_argument("--lr-schedule", choices=("linear", "cos"))
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue from last.pt if it exists (its weights take the place of --weights)")
    p.add_argument("--run-name", help="checkpoint folder name (default: the recipe's name)")
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--save-every", type=float, default=120.0, help="seconds between mid-epoch saves")
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--val-limit", type=int, help="validate on the first N images only")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m zoo.det.train") -> int:
    args = build_parser(prog).parse_args(argv)
    from zoo.errors import user_errors

    overrides = {k: v for k, v in (("mosaic", args.mosaic), ("lr_schedule", args.lr_schedule),
                                   ("label_smoothing", args.label_smoothing)) if v is not None}
    cfg = DetTrainConfig(model=args.model, data=args.data, data_root=args.data_root, recipe=args.recipe,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, img_size=args.img_size,
                         eval_every=args.eval_every, patience=args.patience, weights=args.weights,
                         class_weights=args.class_weights,
                         beta=args.beta, seed=args.seed, resume=args.resume, artifacts=args.artifacts,
                         run_name=args.run_name, workers=args.workers, threads=args.threads,
                         save_every=args.save_every, amp=args.amp, progress=not args.no_progress,
                         val_limit=args.val_limit, overrides=overrides)
    with user_errors(also=(KeyError, ValueError)):
        result = train_detector(cfg)
    if _dist_info()[0] == 0:
        print(f"best val mAP50-95 {result['best_map']:.4f}; best checkpoint {result['best']}; "
              f"{result['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
