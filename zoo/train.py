"""FP32 training of a zoo network on a segmentation dataset.

Examples:
    python -m zoo.train --model ddrnet --data camvid --data-root ../shared/data/camvid
    python -m zoo.train --model espnet --data camvid --data-root ../shared/data/camvid --epochs 100 --resume
    torchrun --nproc_per_node=2 -m zoo.train --model ddrnet --data synthetic --recipe quick

Checkpoints go to <artifacts>/checkpoints/<model>/<data>/<recipe>/: `last.pt` (full training
state, written every --save-every seconds and at each epoch end, so a killed run resumes
mid-epoch with --resume) and `best.pt` (weights + metadata of the best validation mIoU).
"""
from __future__ import annotations

if __name__ == "__main__":  # TCMalloc before torch loads (zoo.hardware: 1.3x faster training steps)
    from zoo.hardware import reexec_with_tcmalloc

    reexec_with_tcmalloc()

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from zoo.checkpoints import checkpoint_dir, read_checkpoint, save_checkpoint
from zoo.evaluate import evaluate_model
from zoo.hardware import allocator_in_use, resolve_amp
from zoo.io import write_json
from zoo.losses import build_loss
from zoo.recipes import Recipe, get_recipe
from zoo.registry import get_entry


@dataclass
class TrainConfig:
    model: str
    data: str = "synthetic"
    data_root: str | Path | None = None
    recipe: str | None = None            # default: the family's recipe
    epochs: int | None = None            # overrides of the recipe
    batch_size: int | None = None
    lr: float | None = None
    crop: tuple[int, int] | None = None
    optimizer: str | None = None
    loss: str | None = None
    class_weights: str | None = None     # none|effective|inverse|median|enet[:C] (None: effective for cb_*, else the recipe's)
    beta: float | None = None            # None: zoo.class_weights.default_beta(counts)
    count_source: str = "pixels"         # pixels|images|instances
    eval_every: int | None = None
    patience: int | None = None          # stop after this many validations in a row without a new best
    warmup_iters: int | None = None      # None: the recipe's (QAT passes 0: its weights are trained)
    seed: int = 0
    resume: bool = False
    artifacts: str | Path | None = None
    workers: int = 1
    threads: int | None = None
    save_every: float = 120.0            # seconds between mid-epoch `last.pt` saves
    amp: str = "none"                    # "bf16": bf16 autocast; "auto": bf16 where the hardware has it (zoo.hardware)
    channels_last: bool | None = None    # None: on for CPU training of a plain network (see _use_channels_last)
    progress: bool = True
    val_split: str = "val"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainHooks:
    """Extension points for training variants of a network (quantization-aware training lives in
    `quant.qat` and plugs in here, so `zoo` never imports `quant`). Both trainers take them:
    `train` (segmentation) and `zoo.det.train.train_detector` (detection).

    `build_kwargs` go to the network builder; `prepare_model` replaces the built network (e.g. by
    a fake-quantized graph initialised from FP32 weights) before the optimizer sees it;
    `on_epoch_start(model, epoch, epochs)` runs before every epoch, resumed ones included (freeze
    schedules); `run_name` names the checkpoint folder instead of the recipe; `meta` is added to
    every checkpoint's metadata. `num_classes` (output channels) and `preprocess` (a
    `Preprocess.to_dict()`) replace the dataset card's where the network being fine-tuned was
    trained otherwise: the official ESPNet CamVid checkpoint has a 12th (void) output and
    BGR 0..255 normalisation. `evaluate_first` (both trainers) validates the prepared
    network once before a fresh run's first step, as "epoch 0", and saves it as best.pt unless
    a later epoch beats it: fine-tuning (QAT) must then earn its place against its starting point.
    """

    build_kwargs: dict[str, Any] = field(default_factory=dict)
    prepare_model: Callable[[nn.Module], nn.Module] | None = None
    on_epoch_start: Callable[[nn.Module, int, int], None] | None = None
    run_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    preprocess: dict[str, Any] | None = None
    evaluate_first: bool = False


@contextmanager
def observers_paused(model: nn.Module):
    """Fake quantizers observe every forward, eval mode included: validation must not move the
    ranges of a quantization-aware graph (nor leak the validation images into the checkpoint saved
    after it). A no-op for float models."""
    from torch.ao.quantization import FakeQuantizeBase

    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    flags = [m.observer_enabled.clone() for m in quantizers]
    for m in quantizers:
        m.disable_observer()
    try:
        yield
    finally:
        for m, flag in zip(quantizers, flags):
            m.observer_enabled.copy_(flag)


def validations_since_best(history: list[dict[str, Any]], key: str = "miou") -> int:
    """How many validations in `history` came after its best one (0: the latest is the best).
    Ties count for the earlier validation, as best.pt keeps it."""
    scores = [h[key] for h in history if h.get(key) is not None]
    if not scores:
        return 0
    best_at = max(range(len(scores)), key=scores.__getitem__)
    return len(scores) - 1 - best_at


def early_stop_reached(history: list[dict[str, Any]], patience: int | None, *, key: str = "miou",
                       distributed: bool = False) -> dict[str, Any] | None:
    """The early-stop record (for the checkpoint metadata) when the last `patience` validations
    all failed to beat the best one, else None. Only rank 0 validates, so under torchrun its
    verdict is broadcast: every rank stops at the same epoch."""
    stop = None
    if patience and _dist_info()[0] == 0 and validations_since_best(history, key) >= patience:
        scored = [h for h in history if h.get(key) is not None]
        best = max(scored, key=lambda h: h[key])
        stop = {"after_epoch": int(history[-1]["epoch"]), "patience": int(patience),
                "best_epoch": int(best["epoch"]), key: float(best[key])}
    if distributed:
        box = [stop]
        dist.broadcast_object_list(box, src=0)
        stop = box[0]
    return stop


class EpochBatches(Sampler[list[int]]):
    """Deterministic batches for one epoch: a permutation seeded by (seed, epoch), split across
    ranks, starting at `start` so that a resumed run continues where the killed one stopped."""

    def __init__(self, n: int, batch: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        per_step = batch * world
        steps = n // per_step  # drop the ragged tail: BatchNorm dislikes batches of one
        self.batches = [perm[s * per_step + rank * batch: s * per_step + (rank + 1) * batch] for s in range(steps)]
        self.batches = self.batches[start:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def steps_per_epoch(n: int, batch: int, world: int) -> int:
    return n // (batch * world)


def _lr_at(recipe: Recipe, it: int, total: int) -> float:
    if recipe.warmup_iters and it < recipe.warmup_iters:
        return recipe.lr * (it + 1) / recipe.warmup_iters
    return recipe.lr * (1 - min(it, total - 1) / total) ** recipe.poly_power


def _build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm/PReLU parameters and biases: it only hurts them.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=False)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    if recipe.optimizer == "adam":  # L2 weight decay in the gradient (ESPNet's official optimizer)
        return torch.optim.Adam(groups, lr=recipe.lr)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; valid: sgd, adamw, adam")


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": random.getstate()[1]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.asarray(state["numpy"], dtype=np.uint32), *np_state[2:]))
    random.setstate((3, tuple(state["python"]), None))


def train(cfg: TrainConfig, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train (or resume) and return {"best": Path, "last": Path, "best_miou": float, "history": [...]}."""
    from zoo import data as zdata

    hooks = hooks or TrainHooks()
    rank, world = _dist_info()
    distributed = world > 1
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif distributed and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    is_main = rank == 0

    entry = get_entry(cfg.model)
    if entry.task == "instance":  # its output is not per-pixel logits; cross-entropy would run on it silently
        raise ValueError(f"{entry.name} is an instance network: train it with python -m zoo.instances.train")
    recipe = get_recipe(cfg.recipe or entry.default_recipe).with_overrides(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, crop=tuple(cfg.crop) if cfg.crop else None,
        optimizer=cfg.optimizer, loss=cfg.loss, eval_every=cfg.eval_every, warmup_iters=cfg.warmup_iters,
    )
    if recipe.epochs < 1 or recipe.batch_size < 1 or recipe.lr <= 0:
        raise ValueError(f"--epochs, --batch-size and --lr must be positive (got {recipe.epochs}, "
                         f"{recipe.batch_size}, {recipe.lr})")
    if recipe.batch_size % world:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by the {world} processes")
    per_rank_batch = recipe.batch_size // world
    card = zdata.load_card(cfg.data)
    pre = zdata.Preprocess.from_dict(hooks.preprocess) if hooks.preprocess else zdata.Preprocess.from_card(card)
    # Outputs beyond the card's classes (a void channel) get no target; evaluation counts a pixel
    # predicted as one of them as wrong (zoo.metrics).
    out_classes = hooks.num_classes or card.num_classes
    if out_classes < card.num_classes:
        raise ValueError(f"{cfg.model} with {out_classes} outputs cannot learn {cfg.data}'s {card.num_classes} classes")
    train_set = zdata.build_dataset(
        cfg.data, root=cfg.data_root, split="train",
        transform=zdata.TrainTransform(pre, crop_size=recipe.crop, scale_range=recipe.scale_range,
                                       ignore_index=card.ignore_index),
    )
    val_set = zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.val_split, transform=zdata.EvalTransform(pre))
    n_steps = steps_per_epoch(len(train_set), per_rank_batch, world)
    if n_steps == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {recipe.batch_size}")
    total_iters = recipe.epochs * n_steps

    _seed_everything(cfg.seed)
    model = entry.build(num_classes=out_classes, **hooks.build_kwargs)
    if hooks.prepare_model is not None:
        model = hooks.prepare_model(model)
    model = model.to(device)
    channels_last = _use_channels_last(cfg, hooks, device)
    amp = resolve_amp(cfg.amp, device)
    if cfg.amp == "auto" and is_main:
        print(f"[train] --amp auto: {amp} on this {device.type}", file=sys.stderr)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    weight, weighting = _class_weights(cfg, recipe, card, is_main=is_main, distributed=distributed)
    if weight is not None and out_classes > len(weight):  # a void output is never a target: any weight
        weight = torch.cat([weight, weight.new_ones(out_classes - len(weight))])
    # A loss chosen on the command line does not inherit the recipe loss's own options
    # (e.g. OHEM's thresh/min_kept would be invalid for cb_ce).
    loss_kwargs = recipe.loss_kwargs if recipe.loss == get_recipe(recipe.name).loss else {}
    criterion = build_loss(recipe.loss, ignore_index=card.ignore_index, weight=weight, **loss_kwargs).to(device)
    optimizer = _build_optimizer(model, recipe)

    out_dir = checkpoint_dir(entry.name, cfg.data, hooks.run_name or recipe.name, cfg.artifacts)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    start_epoch, start_step, best_miou, history = 0, 0, -1.0, []
    if cfg.resume and last_path.is_file():
        state = read_checkpoint(last_path)
        model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        elif is_main:
            # A portable checkpoint (`python -m zoo.checkpoints portable`) drops the optimizer
            # state to stay small enough to keep in git; the optimizer's moments restart from zero.
            print(f"[train] {last_path} has no optimizer state (portable copy): optimizer moments restart",
                  file=sys.stderr)
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        best_miou, history = state.get("best_miou", -1.0), json.loads(state.get("history", "[]"))
        _set_rng_state(state["rng"])
        if is_main:
            print(f"[train] resuming {last_path} at epoch {start_epoch + 1}, step {start_step}/{n_steps}", file=sys.stderr)
            before = history[-1].get("amp") if history else None
            if before is not None and before != amp:
                # Allowed (the weights and optimizer state stay float32 either way) but never silent:
                # each epoch's record in the history says which precision trained it.
                print(f"[train] epochs up to {history[-1]['epoch']} trained with amp {before}; "
                      f"continuing with amp {amp}", file=sys.stderr)
    elif cfg.resume and is_main:
        print(f"[train] --resume: no {last_path} yet, starting from scratch", file=sys.stderr)

    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    meta_base = {
        "model": entry.name, "family": entry.family, "dataset": cfg.data, "classes": list(card.classes),
        "num_classes": out_classes, "recipe": recipe.as_dict(), "seed": cfg.seed, "world_size": world,
        "amp": amp, "channels_last": channels_last, "allocator": allocator_in_use(), "class_weighting": weighting,
        "preprocess": pre.to_dict(), **hooks.meta,
    }

    def save_last(epoch: int, step: int) -> None:
        if not is_main:
            return
        save_checkpoint(last_path, {
            "model": _contiguous_state(model), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "step_in_epoch": step, "best_miou": best_miou, "history": json.dumps(history),
            "rng": _rng_state(), "meta": {**meta_base, "epoch": epoch, "step_in_epoch": step},
        })

    def validate(epoch: int, elapsed_s: float) -> Any:
        """Val scores of `model` now; best.pt when they beat every earlier validation."""
        nonlocal best_miou
        with observers_paused(model):
            scores = evaluate_model(model, val_set, num_classes=card.num_classes, ignore_index=card.ignore_index,
                                    classes=card.classes, device=device, progress=cfg.progress,
                                    desc=f"val {cfg.val_split}")
        if scores.miou > best_miou:
            best_miou = scores.miou
            inference_state = _contiguous_state(model)
            save_checkpoint(best_path, {"model": inference_state, "meta": {
                **meta_base, "epoch": epoch, "metrics": scores.as_dict(),
                "split": cfg.val_split, "train_seconds": elapsed_s,
                "train_active_seconds": active_seconds([*(h["elapsed_s"] for h in history), elapsed_s])}})
        return scores

    t_start, last_save = time.time(), time.time()
    # Wall time of earlier (killed) runs of this training, so elapsed_s counts the whole training.
    prior_s = float(history[-1]["elapsed_s"]) if history else 0.0
    if hooks.evaluate_first and not history and start_epoch == 0 and start_step == 0:
        if is_main:
            scores = validate(0, 0.0)
            history.append({"epoch": 0, "loss": None, "lr": 0.0, "elapsed_s": time.time() - t_start,
                            "amp": amp, "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy})
            print(f"[train] epoch 0 (before training): val mIoU {100 * scores.miou:.2f}", file=sys.stderr, flush=True)
        if distributed:
            dist.barrier()
    kill_at = int(os.environ["EDGEZOO_FAULT_KILL_AT_STEP"]) if os.environ.get("EDGEZOO_FAULT_KILL_AT_STEP") else None
    # A resumed run that had already stopped early stays stopped.
    stopped = early_stop_reached(history, cfg.patience, distributed=distributed) if start_step == 0 else None
    if stopped is not None and start_epoch < recipe.epochs:
        meta_base["early_stop"] = stopped
        save_last(start_epoch, 0)
    for epoch in range(start_epoch, recipe.epochs if stopped is None else start_epoch):
        model.train()
        if hooks.on_epoch_start is not None:
            hooks.on_epoch_start(model, epoch, recipe.epochs)
        first = start_step if epoch == start_epoch else 0
        sampler = EpochBatches(len(train_set), per_rank_batch, seed=cfg.seed, epoch=epoch, rank=rank, world=world, start=first)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers,
                            persistent_workers=False, worker_init_fn=_worker_init)
        bar = tqdm(loader, total=n_steps, initial=first, disable=not (cfg.progress and is_main), dynamic_ncols=True,
                   desc=f"{entry.name} epoch {epoch + 1}/{recipe.epochs}")
        running = None
        for step, (images, labels) in enumerate(bar, start=first):
            it = epoch * n_steps + step
            lr = _lr_at(recipe, it, total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                outputs = net(images)
            # Losses in float32 whatever the autocast precision: softmax over bf16 logits is coarse.
            outputs = [o.float() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
            weights = (1.0, *entry.aux_weights)[: len(outputs)]
            loss = sum(w * criterion(o, labels) for w, o in zip(weights, outputs))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at epoch {epoch + 1} step {step}; lower --lr")
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.2e}")
            if time.time() - last_save > cfg.save_every:
                save_last(epoch, step + 1)
                last_save = time.time()
            if kill_at is not None and it + 1 == kill_at:
                # Fault injection for the resume test: die like `kill -9` would, mid-epoch.
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        done_epochs = epoch + 1
        record: dict[str, Any] = {"epoch": done_epochs, "loss": running, "lr": lr,
                                  "elapsed_s": prior_s + time.time() - t_start, "amp": amp}
        if done_epochs % recipe.eval_every == 0 or done_epochs == recipe.epochs:
            if is_main:
                scores = validate(done_epochs, record["elapsed_s"])
                record.update(miou=scores.miou, pixel_accuracy=scores.pixel_accuracy)
                print(f"[train] epoch {done_epochs}: val mIoU {100 * scores.miou:.2f} "
                      f"(best {100 * best_miou:.2f}), loss {running:.3f}", file=sys.stderr, flush=True)
            model.train()
        if is_main and not cfg.progress:
            print(f"[train] epoch {done_epochs}/{recipe.epochs} loss {running:.4f} lr {lr:.2e} "
                  f"elapsed {record['elapsed_s'] / 60:.1f} min", file=sys.stderr, flush=True)
        history.append(record)
        stopped = early_stop_reached(history, cfg.patience, distributed=distributed)
        if stopped is not None:
            # last.json says the schedule ended here on purpose (quant.qat.qat_run_unfinished).
            meta_base["early_stop"] = stopped
            if is_main:
                print(f"[train] early stop after epoch {done_epochs}: {cfg.patience} validations without beating "
                      f"epoch {stopped['best_epoch']} ({100 * stopped['miou']:.2f})", file=sys.stderr, flush=True)
        save_last(done_epochs, 0)
        last_save = time.time()
        if distributed:
            dist.barrier()
        if stopped is not None:
            break
    finish_run(out_dir, history, is_main=is_main, distributed=distributed)
    return {"best": best_path, "last": last_path, "best_miou": best_miou, "history": history,
            "seconds": prior_s + time.time() - t_start}


def active_seconds(elapsed: list[float]) -> float | None:
    """Training time without the time the run stood still (SIGSTOP, a suspended machine): the sum
    of the per-epoch durations (from cumulative `elapsed_s` values), each capped at 3x their
    median. A validation epoch (~1.3x) keeps its time; a paused one counts as 3 median epochs at
    most."""
    import statistics

    values = [float(e) for e in elapsed if e is not None]
    durations = [b - a for a, b in zip([0.0, *values], values)]
    if not durations:
        return None
    cap = 3 * statistics.median(durations)
    return float(sum(min(d, cap) for d in durations))


def _use_channels_last(cfg: TrainConfig, hooks: TrainHooks, device: torch.device) -> bool:
    """NHWC activations and weights: oneDNN's CPU convolutions run training steps 1.2-1.4x faster
    in it (measured on a 2-core AVX512 Xeon, batch 8 at 288x384: DDRNet-23-slim 1.38 -> 1.00 s,
    BiSeNetV2 4.28 -> 3.11 s, DeepLabV3+ MobileNetV2 3.57 -> 3.03 s). Off by default for a
    network that a hook replaced (QAT's fake-quantized graphs are left as they were validated)
    and on GPUs (AMP-free FP32 there gains little)."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return device.type == "cpu" and hooks.prepare_model is None


def _contiguous_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in the default (NCHW) layout, so weights files do not depend on how
    the network was trained (the optimizer moments in last.pt keep the training layout)."""
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def finish_run(out_dir: Path, history: list[dict[str, Any]], *, is_main: bool, distributed: bool) -> None:
    """End of a training run (segmentation or detection): the history file, then the process group."""
    if is_main:
        write_json(out_dir / "history.json", history)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


def _class_weights(cfg: TrainConfig, recipe: Recipe, card, *, is_main: bool, distributed: bool):
    """Per-class loss weights (or None) and a description of how they were made, for the metadata."""
    from zoo.class_weights import class_weights_for, describe

    # The recipe's weighting belongs to the recipe's loss (like its loss_kwargs): a loss chosen on
    # the command line starts unweighted unless --class-weights says otherwise.
    own = recipe.class_weights if recipe.loss == get_recipe(recipe.name).loss else "none"
    method = cfg.class_weights or ("effective" if recipe.loss in ("cb_ce", "cb_focal") else own)
    if method == "none":
        return None, {"method": "none"}
    kwargs = dict(root=cfg.data_root, split="train", method=method, beta=cfg.beta, source=cfg.count_source,
                  num_classes=card.num_classes, ignore_index=card.ignore_index)
    # Rank 0 counts (and caches the counts atomically); the other ranks then read the cache.
    weight = class_weights_for(cfg.data, progress=cfg.progress, **kwargs) if is_main else None
    if distributed:
        dist.barrier()
        if not is_main:
            weight = class_weights_for(cfg.data, progress=False, **kwargs)
    if is_main:
        print(f"[train] class weights ({method}, {cfg.count_source}): {describe(weight, card.classes)}",
              file=sys.stderr, flush=True)
    return weight, {"method": method, "beta": cfg.beta, "count_source": cfg.count_source,
                    "weights": [round(float(w), 6) for w in weight]}


def _worker_init(worker_id: int) -> None:
    # Each DataLoader worker derives numpy/python seeds from its torch seed (set per epoch by
    # the main process), so augmentation differs across workers and epochs yet is reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def patience_arg(text: str) -> int:
    """argparse type of --patience: a whole number of validations, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--patience takes a count of validations (0 or more), got {text!r}")
    return value


def _class_weight_method(text: str) -> str:
    from zoo.class_weights import parse_method

    try:
        parse_method(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zoo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="network name or alias (see python -m zoo.list)")
    p.add_argument("--data", default="synthetic", help="dataset card: synthetic (default), camvid, cityscapes")
    p.add_argument("--data-root", help="dataset folder (default: the card's default root)")
    p.add_argument("--recipe", help="training recipe (default: the family's; 'quick' for a few minutes)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--optimizer", choices=("sgd", "adamw", "adam"))
    p.add_argument("--loss", choices=("ce", "ohem", "cb_ce", "cb_focal", "lovasz"),
                   help="cb_ce / cb_focal: class-balanced (Cui et al. 2019) with --class-weights effective")
    p.add_argument("--class-weights", type=_class_weight_method, metavar="METHOD",
                   help="per-class loss weights: none, effective, inverse, median, enet or enet:C (ENet's "
                        "constant; ESPNet uses enet:1.10); default: effective for cb_* losses, else the recipe's")
    p.add_argument("--beta", type=float, help="class-balanced beta (default: 1 - 1/largest class count)")
    p.add_argument("--count-source", choices=("pixels", "images", "instances"), default="pixels",
                   help="what the class counts count (default pixels)")
    p.add_argument("--eval-every", type=int, help="epochs between validation runs")
    p.add_argument("--patience", type=patience_arg, metavar="N",
                   help="stop early after N validations in a row without a new best (default: never)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from last.pt if it exists")
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--save-every", type=float, default=120.0, help="seconds between mid-epoch saves")
    p.add_argument("--amp", choices=("none", "bf16", "auto"), default="none",
                   help="mixed precision: bf16 autocast (weights and losses stay float32); auto: bf16 on CPUs "
                        "with AVX512-BF16/AMX/ARM BF16 and on GPUs that support it, none elsewhere")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on for CPU training, 1.2-1.4x faster steps there)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _model_task(argv: list[str]) -> str | None:
    """The task of the network --model names (detection and instance networks have their own
    trainers, which then take the whole command)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--model")
    known, _ = peek.parse_known_args(argv)
    try:
        return get_entry(known.model).task if known.model else None
    except KeyError:  # unknown name: the full parser path reports it
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    task = _model_task(argv)
    if task == "detection":
        from zoo.det.train import main as det_main

        return det_main(argv, prog="python -m zoo.train")
    if task == "instance":
        from zoo.instances.train import main as instance_main

        return instance_main(argv, prog="python -m zoo.train")
    args = build_parser().parse_args(argv)
    from zoo.errors import user_errors

    cfg = TrainConfig(model=args.model, data=args.data, data_root=args.data_root, recipe=args.recipe,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, crop=args.crop,
                      optimizer=args.optimizer, loss=args.loss, eval_every=args.eval_every, patience=args.patience,
                      seed=args.seed,
                      resume=args.resume, artifacts=args.artifacts, workers=args.workers, threads=args.threads,
                      save_every=args.save_every, progress=not args.no_progress, amp=args.amp,
                      class_weights=args.class_weights, beta=args.beta, count_source=args.count_source,
                      channels_last=args.channels_last)
    with user_errors(also=(KeyError, ValueError)):
        result = train(cfg)
    if _dist_info()[0] == 0:
        print(f"best val mIoU {100 * result['best_miou']:.2f}; best checkpoint {result['best']}; "
              f"{result['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
