"""Quantization-aware training: fine-tune an FP32 checkpoint with fake INT8 quantization.

    python -m quant.qat --model ddrnet --data camvid --data-root ../shared/data/camvid
    python -m quant.qat --model ddrnet --data synthetic --epochs 2          # quick check
    torchrun --nproc_per_node=2 -m quant.qat --model ddrnet --data synthetic --epochs 2
    python -m quant.qat --model yolov5n --data synthetic-det --epochs 1     # detection

The scheme (`quant.fx_quant`): symmetric per-channel INT8 weights and symmetric per-tensor INT8
activations, which TensorRT, ONNX Runtime and PyTorch's x86 kernels all run. On x86 CPUs without
AVX512-VNNI the weights train on -64..64 (`--weight-range auto`, recorded in the checkpoint):
there the CPU kernels add u8*s8 pairs into a saturating int16, and full-range weights would make
the INT8 artifacts compute something else than the fake-quantized graph. Conv-BN pairs are
fused into QAT modules that fold BN into the quantized weight; BN statistics are frozen after
`freeze_bn_epoch` epochs and the quantizers' ranges after `freeze_observer_epoch`, so the last
epochs train against the exact integer grid that inference will use. Runs start the ranges from
`--calib-images` train images (`fx_quant.calibrate_qat`; detectors: letterboxed to the square
training size), by default with the method whose start agrees best with FP32 on those images
(`--calib-method auto`, `fx_quant.choose_qat_start`), and validate that calibrated,
not yet fine-tuned graph as "epoch 0": it stays best.pt unless fine-tuning beats it, and the
history says which epoch won. The fine-tuning stops early once `--patience` validations in a row
(default 2) have not beaten the best: on CamVid the best was the calibrated start or the first
validation in every run, so the rest of the schedule bought nothing; last.json records the stop (`early_stop`).

The fine-tuning reuses `zoo.train` (recipe, loss, progress, periodic validation, best / last
checkpoints, mid-epoch `--resume`, torchrun) through its `TrainHooks`: about a tenth of the FP32
recipe's epochs at a tenth of its learning rate. Detectors fine-tune the same way through
`zoo.det.train` (YOLOv5 loss, EMA: the EMA weights are validated and saved), without the
recipe's warm-up, on the FP32 parent's classes and pre-processing; YOLOv5's box decode stays a
float FX leaf (`zoo.det.yolov5.BoxDecode`). Checkpoints go to
<artifacts>/checkpoints/<model>/<data>/qat-<fp32 recipe>-<parent sha256[:12]>/ (one folder per FP32
parent, so that benchmarking two FP32 checkpoints keeps both QAT runs) and hold the fake-quantized graph's
state dict; `load_qat` rebuilds it, and `quant.fx_quant.export_qdq_onnx` / `convert_int8` turn it
into a QDQ ONNX file or real PyTorch INT8 kernels.
"""
from __future__ import annotations

if __name__ == "__main__":  # TCMalloc before torch loads (zoo.hardware: 1.3x faster training steps)
    from zoo.hardware import reexec_with_tcmalloc

    reexec_with_tcmalloc()

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from quant import fx_quant
from quant.calibrate import QuantError

PREPARE_HW = (64, 64)  # the FX trace is shape-agnostic; a small example input keeps it fast
QAT_START_METHODS = ("auto", *fx_quant.QAT_CALIB_METHODS)


@dataclass
class QATConfig:
    model: str
    data: str = "synthetic"
    data_root: str | Path | None = None
    weights: str | Path | None = None      # FP32 parent; default: zoo.api.find_fp32_checkpoint (cache or trained/)
    epochs: int | None = None              # default: a tenth of the parent recipe's (at least 2)
    lr: float | None = None                # default: a tenth of the parent recipe's
    batch_size: int | None = None
    crop: tuple[int, int] | None = None
    freeze_bn_epoch: int | None = None     # default: a third of the epochs
    freeze_observer_epoch: int | None = None  # default: half of the epochs
    scheme: str = "symmetric"
    weight_range: str = "auto"             # full (-127..127), reduced (-64..64), auto: reduced where
                                           # this CPU's INT8 kernels saturate (fx_quant.weight_range)
    seed: int = 0
    resume: bool = False
    artifacts: str | Path | None = None
    workers: int = 1
    threads: int | None = None
    eval_every: int | None = None
    patience: int | None = 2               # stop after this many validations without beating the best
                                           # (the calibrated start, usually: NOTES.md session 21); 0/None: never
    progress: bool = True
    calib_images: int = 32                 # quantizer ranges start from these train images
                                           # (fx_quant.calibrate_qat); 0: from the first batches
    calib_method: str = "auto"             # how those images set the starting activation ranges
                                           # (fx_quant.QAT_CALIB_METHODS), or "auto": the one whose
                                           # start agrees best with FP32 on them (choose_qat_start)


def qat_run_name(parent_recipe: str, parent_sha256: str | None = None) -> str:
    """The checkpoint folder of a QAT run: ``qat-<recipe>-<parent sha256[:12]>``; without a parent
    hash, ``qat-<recipe>``, where runs made before the hash was part of the name live."""
    return f"qat-{parent_recipe}-{parent_sha256[:12]}" if parent_sha256 else f"qat-{parent_recipe}"


def schedule(epochs: int, freeze_bn_epoch: int | None, freeze_observer_epoch: int | None) -> tuple[int, int]:
    """Epoch indices (0-based) from which BN statistics and quantizer ranges are frozen."""
    bn = max(1, epochs // 3) if freeze_bn_epoch is None else freeze_bn_epoch
    obs = max(1, epochs // 2) if freeze_observer_epoch is None else freeze_observer_epoch
    if not (0 <= bn <= epochs and 0 <= obs <= epochs):
        raise QuantError(f"freeze epochs must lie in 0..{epochs} (got BN {bn}, observers {obs})")
    return bn, obs


def _parent(cfg: QATConfig):
    from zoo.api import find_fp32_checkpoint
    from zoo.checkpoints import CheckpointError, load_weights
    from zoo.data import load_card
    from zoo.registry import get_entry

    entry = get_entry(cfg.model)
    path = cfg.weights or find_fp32_checkpoint(entry.name, cfg.data, cfg.artifacts)
    if path is None:
        raise CheckpointError(f"no FP32 checkpoint of {entry.name} on {cfg.data} to fine-tune; train one with "
                              f"python -m zoo.train --model {entry.name} --data {cfg.data}, or pass --weights PATH")
    card = load_card(cfg.data)
    return entry, load_weights(entry, path, num_classes=card.num_classes)


def qat_finetune(cfg: QATConfig) -> dict[str, Any]:
    """Fine-tune with fake quantization; returns the trainer's result (best / last checkpoint
    paths, and `best_miou` for segmentation or `best_map` for detection)."""
    from zoo.recipes import get_recipe
    from zoo.train import TrainConfig, train

    entry, parent = _parent(cfg)
    if entry.task == "detection":
        return _finetune_detector(cfg, entry, parent)
    parent_recipe_name = _recipe_name(parent.meta)
    recipe = get_recipe(parent_recipe_name or entry.default_recipe)
    epochs = cfg.epochs or max(2, recipe.epochs // 10)
    lr = cfg.lr or recipe.lr / 10
    build_kwargs = {"aux": False} if entry.aux_weights else {}
    parent_state = {k: v for k, v in parent.model.state_dict().items()}

    def load_parent(model: nn.Module) -> nn.Module:
        from zoo.checkpoints import load_state

        load_state(model, parent_state, source=str(parent.path))
        return model

    calibration = _qat_calibration(cfg, entry, parent, recipe.name)
    # float_head: the classifier conv and the logits stay float, as in static PTQ (`int8_float_ops`)
    hooks = _hooks(cfg, parent, epochs, recipe.name, build_kwargs, load_parent, calibration, float_head=True)
    # The parent's outputs and pre-processing, not the card's: an official checkpoint may have a
    # void channel and its own normalisation, and fine-tuning on other inputs would undo it.
    hooks.num_classes, hooks.preprocess = parent.num_classes, parent.preprocess
    # The calibrated, not yet fine-tuned graph is validated as "epoch 0" and stays best.pt unless
    # an epoch of fine-tuning beats it (NOTES.md, session 8: fine-tuning a val-selected FP32 peak
    # can lose more than quantization does).
    hooks.evaluate_first = True
    tcfg = TrainConfig(model=entry.name, data=cfg.data, data_root=cfg.data_root, recipe=recipe.name, epochs=epochs,
                       lr=lr, batch_size=cfg.batch_size, crop=cfg.crop, seed=cfg.seed, resume=cfg.resume, artifacts=cfg.artifacts,
                       workers=cfg.workers, threads=cfg.threads, progress=cfg.progress,
                       eval_every=cfg.eval_every or max(1, epochs // 5), patience=cfg.patience or None,
                       # No warm-up, as for detectors: it exists for random weights, and the DDRNet
                       # recipe's 200 iterations would be 4 of a 10-epoch fine-tuning's epochs.
                       warmup_iters=0)
    _announce(entry.name, cfg.data, epochs, lr, parent.path, hooks, cfg.patience)
    return train(tcfg, hooks)


def _finetune_detector(cfg: QATConfig, entry, parent) -> dict[str, Any]:
    """QAT of a detector through `zoo.det.train`: it loads the parent as `--weights` (its builder
    options and pre-processing come with it), the hooks make the graph fake-quantized."""
    from zoo.data import load_card
    from zoo.det.train import DetTrainConfig, train_detector
    from zoo.recipes import get_det_recipe

    card = load_card(cfg.data)
    if parent.num_classes != card.num_classes:
        raise QuantError(f"QAT fine-tunes a detector trained on {cfg.data}'s {card.num_classes} classes; "
                         f"{parent.path} has {parent.num_classes}: fine-tune it first with python -m zoo.train "
                         f"--model {entry.name} --data {cfg.data} --weights {parent.path}")
    if cfg.crop is not None and cfg.crop[0] != cfg.crop[1]:
        raise QuantError(f"detectors train on square images; got --crop {cfg.crop[0]} {cfg.crop[1]}")
    recipe = get_det_recipe(_recipe_name(parent.meta) or entry.default_recipe)
    epochs = cfg.epochs or max(2, recipe.epochs // 10)
    lr = cfg.lr or recipe.lr / 10
    # What the parent was built with (YOLOv5: stem, activation), explicit so that `load_qat`
    # rebuilds the same network whatever the builder's defaults become.
    build_kwargs = {**(parent.meta.get("build_kwargs") or {}), **getattr(parent.model, "build_kwargs", {})}
    img_size = cfg.crop[0] if cfg.crop else recipe.img_size
    calibration = _det_qat_calibration(cfg, entry, parent, recipe.name, img_size)
    hooks = _hooks(cfg, parent, epochs, recipe.name, build_kwargs, lambda model: model, calibration,
                   float_head=False)
    # As for segmentation: the calibrated graph is validated as "epoch 0" and stays best.pt unless
    # fine-tuning beats it.
    hooks.evaluate_first = calibration is not None
    dcfg = DetTrainConfig(model=entry.name, data=cfg.data, data_root=cfg.data_root, recipe=recipe.name,
                          epochs=epochs, lr=lr, batch_size=cfg.batch_size, img_size=cfg.crop[0] if cfg.crop else None,
                          eval_every=cfg.eval_every or max(1, epochs // 5), patience=cfg.patience or None,
                          weights=parent.path, seed=cfg.seed,
                          resume=cfg.resume, artifacts=cfg.artifacts, workers=cfg.workers, threads=cfg.threads,
                          progress=cfg.progress,
                          # No warm-up: it exists for random weights, and its bias-lr bump (0.1 in
                          # the reference recipe) would undo a trained head.
                          overrides={"warmup_epochs": 0.0})
    _announce(entry.name, cfg.data, epochs, lr, parent.path, hooks, cfg.patience)
    return train_detector(dcfg, hooks)


def _calibration_wanted(cfg: QATConfig, entry, parent, recipe_name: str) -> bool:
    """Whether a QAT run starts from calibrated ranges: not with `calib_images` 0, nor when a run
    is being resumed (its saved ranges replace whatever a calibration would give)."""
    from zoo.checkpoints import checkpoint_dir

    if cfg.calib_images < 0:
        raise QuantError(f"--calib-images must be >= 0 (0 turns calibration off), got {cfg.calib_images}")
    if cfg.calib_method not in QAT_START_METHODS:
        raise QuantError(f"unknown QAT calibration method {cfg.calib_method!r}; valid: {', '.join(QAT_START_METHODS)}")
    last = checkpoint_dir(entry.name, cfg.data, qat_run_name(recipe_name, parent.sha256), cfg.artifacts) / "last.pt"
    return bool(cfg.calib_images) and not (cfg.resume and last.is_file())


def _qat_calibration(cfg: QATConfig, entry, parent, recipe_name: str):
    """The calibration images that start a fresh segmentation QAT run's quantizer ranges
    (`quant.calibrate.build_calibration`: seeded train subset at the card's input size, the
    parent's pre-processing), or None: `calib_images` 0, or a run being resumed (its saved
    ranges replace whatever a calibration would give)."""
    from quant.calibrate import build_calibration
    from zoo.data import Preprocess, load_card

    if not _calibration_wanted(cfg, entry, parent, recipe_name):
        return None
    card = load_card(cfg.data)
    pre = Preprocess.from_dict(parent.preprocess) if parent.preprocess else Preprocess.from_card(card)
    return build_calibration(cfg.data, root=cfg.data_root, split="train", num_images=cfg.calib_images,
                             seed=cfg.seed, preprocess=pre, input_hw=tuple(card.input_size), min_images=1)


def _det_qat_calibration(cfg: QATConfig, entry, parent, recipe_name: str, img_size: int):
    """The calibration images of a fresh detector QAT run: the seeded train subset that
    `quant.calibrate` draws, each letterboxed to a square `img_size` (grey bands included, as the
    network sees them at inference) with the parent's pre-processing; or None (as for segmentation:
    `calib_images` 0, or a run being resumed)."""
    from quant.calibrate import CalibrationData, _hash, seeded_subset
    from zoo import data as zdata
    from zoo.data.letterbox import DetEvalTransform

    if not _calibration_wanted(cfg, entry, parent, recipe_name):
        return None
    card = zdata.load_card(cfg.data)
    pre = zdata.Preprocess.from_dict(parent.preprocess) if parent.preprocess else zdata.Preprocess.from_card(card)
    ds = zdata.build_dataset(cfg.data, root=cfg.data_root, split="train",
                             transform=DetEvalTransform(pre, img_size, rect=False))
    order = sorted(range(len(ds)), key=lambda i: str(ds.files[i]))
    if not order:
        raise QuantError(f"{cfg.data}/train has no images to calibrate the QAT ranges; pass --calib-images 0")
    arrays, names = [], []
    for index in seeded_subset(order, int(cfg.calib_images), cfg.seed):
        image, _, sample = ds[index]
        arrays.append(np.asarray(image, dtype=np.float32)[None])
        names.append(sample.name)
    hw = (img_size, img_size)
    pre_dict = {**pre.to_dict(), "letterbox": f"square {img_size}"}
    return CalibrationData(arrays=arrays, names=names, dataset=cfg.data, split="train", seed=cfg.seed,
                           requested=int(cfg.calib_images), input_hw=hw, preprocess=pre_dict,
                           sha256=_hash(cfg.data, "train", names, pre_dict, hw, cfg.seed, arrays))


def _recipe_name(meta: dict[str, Any]) -> str | None:
    recipe = meta.get("recipe")
    return recipe.get("name") if isinstance(recipe, dict) else None


def _hooks(cfg: QATConfig, parent, epochs: int, recipe_name: str, build_kwargs: dict[str, Any],
           init: Callable[[nn.Module], nn.Module], calibration=None, *, float_head: bool):
    """The TrainHooks of a QAT run: `init` (the parent's weights, where the trainer does not load
    them itself), then fake quantization; the freeze schedule; provenance in every checkpoint."""
    from zoo.train import TrainHooks

    bn_epoch, obs_epoch = schedule(epochs, cfg.freeze_bn_epoch, cfg.freeze_observer_epoch)
    range_name, weight_qrange = (_resumed_weight_range(cfg, recipe_name, parent.sha256)
                                 or fx_quant.weight_range(cfg.weight_range))

    def prepare_model(model: nn.Module) -> nn.Module:
        model = init(model)
        # Recorded so that a checkpoint trained with other float islands counts as stale.
        qat_meta["float_ops"] = list(fx_quant.int8_float_ops(model, float_head=float_head))
        qat_meta["float_modules"] = fx_quant.float_module_names(model, qat_meta["float_ops"])
        float_model = copy.deepcopy(model) if calibration is not None and cfg.calib_method == "auto" else None
        prepared = fx_quant.prepare(model, qat=True, input_hw=PREPARE_HW, scheme=cfg.scheme,
                                    weight_qrange=weight_qrange, float_ops=qat_meta["float_ops"])
        if float_model is not None:
            method, scores = fx_quant.choose_qat_start(float_model, prepared, calibration.arrays)
            qat_meta["calibration_method"], qat_meta["start_scores"] = method, scores
            print(f"[qat] start: {method} ranges (fidelity to FP32 on the {calibration.size} calibration images: "
                  + ", ".join(f"{m} {v:.4f}" for m, v in scores.items()) + ")", file=sys.stderr, flush=True)
        elif calibration is not None:
            fx_quant.calibrate_qat(prepared, calibration, cfg.calib_method)
        return prepared

    def on_epoch_start(model: nn.Module, epoch: int, total: int) -> None:
        if epoch >= bn_epoch:
            fx_quant.freeze_bn_stats(model)
        if epoch >= obs_epoch:
            fx_quant.freeze_observers(model)

    qat_meta = {"variant": "qat", "scheme": cfg.scheme, "weight_range": range_name,
                # validations no longer move the ranges (zoo.train.observers_paused); checkpoints
                # without this mark had them pulled toward the validation images (stale)
                "ranges_fixed_in_validation": True,
                "weight_qrange": list(weight_qrange), "weight_range_requested": cfg.weight_range,
                "cpu_int8_pairs_saturate": fx_quant.int8_pairs_saturate(), "freeze_bn_epoch": bn_epoch,
                "freeze_observer_epoch": obs_epoch, "prepare_hw": list(PREPARE_HW), "build_kwargs": build_kwargs,
                "calibration": calibration.as_dict() if calibration is not None else None,
                "calibration_method": cfg.calib_method if calibration is not None else None,
                "parent": {"path": str(parent.path), "sha256": parent.sha256,
                           "recipe": _recipe_name(parent.meta), "metrics": parent.meta.get("metrics", {})},
                "versions": {"torch": torch.__version__}}
    return TrainHooks(build_kwargs=build_kwargs, prepare_model=prepare_model, on_epoch_start=on_epoch_start,
                      run_name=qat_run_name(recipe_name, parent.sha256), meta={"qat": qat_meta})


def _resumed_weight_range(cfg: QATConfig, recipe_name: str, parent_sha256: str) -> tuple[str, tuple[int, int]] | None:
    """The weight range a run being resumed (`--resume`, last.pt present) was trained with: its
    quantizer scales only mean something on that range, whatever this CPU would choose."""
    from zoo.checkpoints import checkpoint_dir, read_checkpoint
    from zoo.registry import get_entry

    if not cfg.resume:
        return None
    last = (checkpoint_dir(get_entry(cfg.model).name, cfg.data, qat_run_name(recipe_name, parent_sha256), cfg.artifacts)
            / "last.pt")
    if not last.is_file():
        return None
    q = (read_checkpoint(last).get("meta") or {}).get("qat") or {}
    qrange = recorded_weight_qrange(q)
    name = q.get("weight_range") or "full"
    if cfg.weight_range not in ("auto", name):
        raise QuantError(f"--resume: {last} trained with {name} weights ({qrange[0]}..{qrange[1]}); "
                         f"--weight-range {cfg.weight_range} would not fit its quantizers")
    return name, qrange


def recorded_weight_qrange(qat_meta: dict[str, Any]) -> tuple[int, int]:
    """The weight levels a QAT checkpoint trained on (its `meta["qat"]`): as recorded, or the full
    range for checkpoints from before the range was recorded."""
    lo, hi = qat_meta.get("weight_qrange") or (fx_quant.WEIGHT_QMIN, fx_quant.WEIGHT_QMAX)
    return int(lo), int(hi)


def qat_checkpoint_stale(qat_meta: dict[str, Any], parent_sha256: str, *, flags: set[str] | None = None,
                         machine: str | None = None, float_modules: list[str] | None = None,
                         float_ops: Sequence[str] | None = None, detector: bool = False) -> str | None:
    """Why a cached QAT checkpoint (its `meta["qat"]`) cannot serve the FP32 weights `parent_sha256`
    on this machine, or None when it can.

    Stale: fine-tuned from other FP32 weights, or trained on another weight range than a
    fine-tuning here would use (`fx_quant.weight_range("auto")`). A full-range checkpoint from a
    VNNI machine makes INT8 artifacts whose int16 pair sums saturate on this CPU; a reduced-range
    one from here would waste a bit of precision where nothing saturates. With `float_modules`
    (`fx_quant.float_module_names` of the network now), also stale when it trained with other
    modules kept in float (checkpoints from before the field was recorded kept none): its
    quantizers sit elsewhere in the graph. The same for `float_ops` (`fx_quant.int8_float_ops`).
    Stale too when its validations ran with the observers on (no `ranges_fixed_in_validation`):
    the validation images then moved the ranges saved with it. Not for a `detector`: the detector
    trainer always paused them."""
    if (qat_meta.get("parent") or {}).get("sha256") != parent_sha256:
        return "the cached one was fine-tuned from other FP32 weights"
    if not detector and not qat_meta.get("ranges_fixed_in_validation"):
        return ("the cached one let its validations move the quantizer ranges (observers ran on the validation "
                "images before session 21's fix)")
    if float_ops is not None and list(qat_meta.get("float_ops") or []) != list(float_ops):
        return (f"the cached one was trained with float ops {list(qat_meta.get('float_ops') or []) or 'none'}, the "
                f"network now keeps {list(float_ops) or 'none'} in float (quant.fx_quant.int8_float_ops)")
    if float_modules is not None and sorted(qat_meta.get("float_modules") or []) != sorted(float_modules):
        return (f"the cached one was trained with {len(qat_meta.get('float_modules') or [])} modules in float, "
                f"the FX graph now keeps {len(float_modules)} (quant.fx_quant.keep_float)")
    trained = recorded_weight_qrange(qat_meta)
    name, wanted = fx_quant.weight_range("auto", flags=flags, machine=machine)
    if trained != tuple(wanted):
        return (f"the cached one trained weights on {trained[0]}..{trained[1]}, but QAT on this CPU trains "
                f"{name} weights {wanted[0]}..{wanted[1]} (quant.fx_quant.weight_range)")
    return None


def qat_run_unfinished(best: str | Path) -> str | None:
    """Why the fine-tuning that wrote `best` (a QAT run's best.pt) has not finished, or None.

    A killed fine-tuning leaves a best.pt (the calibrated graph is validated as epoch 0 before any
    training) but a `last.json` short of its schedule, or none; its checkpoint must not stand for
    the finished fine-tuning (`QATConfig.resume` continues it). A checkpoint without sidecars
    (placed by hand) counts as finished, and so does one that stopped early (`--patience`)."""
    from zoo.io import read_json_dict

    best = Path(best)
    planned = ((read_json_dict(best.with_suffix(".json")) or {}).get("recipe") or {}).get("epochs")
    if planned is None:
        return None
    last = read_json_dict(best.with_name("last.json"))
    if not last:
        return f"the cached fine-tuning {best.parent.name} stopped before its first epoch ended"
    done = int(last.get("epoch", 0))
    planned = int(((last.get("recipe") or {}).get("epochs")) or planned)
    if last.get("early_stop"):
        return None  # stopped on purpose: no validation beat the best for `patience` in a row
    if done < planned:
        return f"the cached fine-tuning {best.parent.name} stopped after epoch {done} of {planned}"
    return None


def _announce(model: str, data: str, epochs: int, lr: float, parent_path, hooks, patience: int | None) -> None:
    q = hooks.meta["qat"]
    lo, hi = q["weight_qrange"]
    stop = f"; stops after {patience} validations without a new best" if patience else ""
    print(f"[qat] {model} on {data}: {epochs} epochs at lr {lr:.2e} from {parent_path} "
          f"(BN frozen from epoch {q['freeze_bn_epoch'] + 1}, ranges from epoch {q['freeze_observer_epoch'] + 1}; "
          f"weights {q['weight_range']} {lo}..{hi}{stop})", file=sys.stderr, flush=True)


def find_qat_checkpoint(model: str, dataset: str, artifacts: str | Path | None = None,
                        parent_sha256: str | None = None) -> Path | None:
    """The best QAT checkpoint for (model, dataset), from the family recipe's parent first, then
    `quick`'s: the one fine-tuned from `parent_sha256` when given (or, failing that, one in the
    folder of runs made before the parent was part of the name, which the caller checks with
    `qat_checkpoint_stale`); without it, the newest one."""
    from zoo.checkpoints import checkpoint_dir
    from zoo.registry import get_entry

    entry = get_entry(model)
    recipes = (entry.default_recipe, "quick")
    folder = checkpoint_dir(entry.name, dataset, "x", artifacts).parent
    if parent_sha256:
        names = [qat_run_name(r, parent_sha256) for r in recipes] + [qat_run_name(r) for r in recipes]
        for name in names:
            path = folder / name / "best.pt"
            if path.is_file():
                return path
        # A parent trained with another recipe (e.g. the campaign's espnet_cw) names its QAT run
        # after that recipe: the parent's hash is what identifies it.
        found = sorted(folder.glob(f"qat-*-{parent_sha256[:12]}/best.pt"))
        return found[0] if found else None
    for recipe in recipes:
        base = folder / qat_run_name(recipe)
        own = re.compile(re.escape(base.name) + r"(-[0-9a-f]{12})?")
        found = [p for p in folder.glob(f"{base.name}*/best.pt") if own.fullmatch(p.parent.name)]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime_ns)
    found = list(folder.glob("qat-*/best.pt"))
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def load_qat(model: str, path: str | Path, *, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the fake-quantized graph of a QAT checkpoint (eval mode, ranges frozen) and its metadata."""
    from zoo.checkpoints import CheckpointError, read_checkpoint
    from zoo.registry import get_entry

    state = read_checkpoint(path)
    meta = state.get("meta", {})
    qat_meta = meta.get("qat")
    if not qat_meta:
        raise CheckpointError(f"'{path}' is not a QAT checkpoint (no 'qat' metadata); make one with "
                              f"python -m quant.qat --model {model}")
    entry = get_entry(model)
    if meta.get("model") not in (None, entry.name):
        raise CheckpointError(f"'{path}' holds {meta.get('model')}, not {entry.name}")
    net = entry.build(num_classes=num_classes, **qat_meta.get("build_kwargs", {}))
    # Quantizer ranges are not part of the state dict: rebuild with the trained one (checkpoints
    # from before the range was recorded trained on the full range).
    weight_qrange = recorded_weight_qrange(qat_meta)
    # The float ops it trained with (none before they were recorded), whatever the network's now.
    prepared = fx_quant.prepare(net, qat=True, input_hw=tuple(qat_meta.get("prepare_hw", PREPARE_HW)),
                                scheme=qat_meta.get("scheme", "symmetric"), weight_qrange=weight_qrange,
                                float_ops=qat_meta.get("float_ops") or ())
    result = prepared.load_state_dict(state["model"], strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"QAT checkpoint '{path}' does not fit {entry.name}: missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    prepared.eval()
    fx_quant.freeze_observers(prepared)
    fx_quant.freeze_bn_stats(prepared)
    return prepared, meta


def build_parser() -> argparse.ArgumentParser:
    from zoo.train import patience_arg

    p = argparse.ArgumentParser(prog="python -m quant.qat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--weights", help="FP32 parent checkpoint (default: the best-scoring cached or trained/ FP32 "
                                     "weights for --model/--data)")
    p.add_argument("--epochs", type=int, help="default: a tenth of the FP32 recipe's epochs (at least 2)")
    p.add_argument("--lr", type=float, help="default: a tenth of the FP32 recipe's learning rate")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="training crop (default: the recipe's)")
    p.add_argument("--freeze-bn-epoch", type=int, help="freeze BN statistics from this epoch (0-based; default epochs//3)")
    p.add_argument("--freeze-observer-epoch", type=int, help="freeze quantizer ranges from this epoch (default epochs//2)")
    p.add_argument("--scheme", choices=fx_quant.SCHEMES, default="symmetric",
                   help="activation scheme: symmetric (TensorRT-compatible, default) or affine")
    p.add_argument("--weight-range", choices=("auto", *fx_quant.WEIGHT_RANGES), default="auto",
                   help="weight levels: full (-127..127), reduced (-64..64, no int16 saturation in x86 INT8 "
                        "kernels without AVX512-VNNI), auto (default): reduced where this CPU needs it")
    p.add_argument("--eval-every", type=int, help="epochs between validations (default: a fifth of the epochs)")
    p.add_argument("--patience", type=patience_arg, default=2, metavar="N",
                   help="stop after N validations in a row that do not beat the best so far, usually the calibrated "
                        "start (default 2; 0: run every epoch)")
    p.add_argument("--calib-images", type=int, default=32,
                   help="start the quantizer ranges from this many train images (detectors: letterboxed; 0: from the "
                        "first training batches); the calibrated graph is validated as epoch 0 (default 32)")
    p.add_argument("--calib-method", choices=QAT_START_METHODS, default="auto",
                   help="how the calibration images start the activation ranges: mean-minmax (the mean of "
                        "per-image min/max, what the moving-average observers track), the range a static PTQ of "
                        "that method picks (minmax, percentile, entropy), or auto (default): of mean-minmax, "
                        "entropy and percentile, the start whose outputs on the calibration images agree best "
                        "with FP32 (arg-max agreement for segmentation, SQNR for detectors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--artifacts")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from zoo.errors import user_errors

    args = build_parser().parse_args(argv)
    cfg = QATConfig(model=args.model, data=args.data, data_root=args.data_root, weights=args.weights,
                    epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, crop=args.crop, freeze_bn_epoch=args.freeze_bn_epoch,
                    freeze_observer_epoch=args.freeze_observer_epoch, scheme=args.scheme,
                    weight_range=args.weight_range, seed=args.seed,
                    resume=args.resume, artifacts=args.artifacts, workers=args.workers, threads=args.threads,
                    eval_every=args.eval_every, patience=args.patience, progress=not args.no_progress, calib_images=args.calib_images,
                    calib_method=args.calib_method)
    with user_errors():
        result = qat_finetune(cfg)
    score = (f"mAP50-95 {result['best_map']:.4f}" if "best_map" in result
             else f"mIoU {100 * result['best_miou']:.2f}")
    print(f"[qat] best val {score} -> {result['best']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
