"""Public Python API: the same code paths the CLIs use."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.checkpoints import CheckpointError, LoadedWeights, checkpoint_dir, load_weights, trained_dir, weights_exist
from zoo.registry import get_entry

VARIANTS = ("fp32", "qat", "static", "dynamic")


def find_fp32_checkpoint(model: str, dataset: str, artifacts: str | Path | None = None) -> Path | None:
    """The FP32 checkpoint to use for (model, dataset) when none is given: of the artifact cache's
    run of the family recipe and the repository's kept weights (`trained/<model>/<dataset>/<recipe>/`,
    see `zoo.checkpoints.trained_dir`; runs of registered recipes made for this model and
    dataset), the one with the highest recorded validation score (the cache first on a tie);
    without any, the cache's `quick` run."""
    from zoo.recipes import RECIPES

    entry = get_entry(model)
    candidates = [checkpoint_dir(entry.name, dataset, entry.default_recipe, artifacts) / "best.pt"]
    kept_root = trained_dir()
    if kept_root is not None:
        # by their sidecars: large kept weights are stored in parts (zoo.checkpoints.write_kept)
        candidates += sorted(p.with_suffix(".pt") for p in (kept_root / entry.name / dataset).glob("*/best.json"))
    scored = []
    for order, path in enumerate(candidates):
        info = _best_info(path)
        if info is None or path.parent.name not in RECIPES:
            continue  # a QAT, ablation or moved-aside run is not the network's FP32 weights
        if info.get("model") not in (None, entry.name) or info.get("dataset") not in (None, dataset) \
                or "qat" in info:
            continue
        metrics = info.get("metrics") or {}
        score = metrics.get("miou", metrics.get("map"))
        scored.append((-(float(score) if score is not None else -1.0), order, path))
    if scored:
        return min(scored)[2]
    path = checkpoint_dir(entry.name, dataset, "quick", artifacts) / "best.pt"
    return path if path.is_file() else None


def _best_info(path: Path) -> dict[str, Any] | None:
    """The sidecar metadata of an existing best.pt, whole or in parts ({} when it has none), else None."""
    from zoo.io import read_json_dict

    return (read_json_dict(path.with_suffix(".json")) or {}) if weights_exist(path) else None


def load_fp32(
    model: str,
    *,
    dataset: str = "synthetic",
    weights: str | Path | None = None,
    artifacts: str | Path | None = None,
    data_root: str | Path | None = None,
    train_if_missing: bool = True,
    threads: int | None = None,
    progress: bool = True,
    train_epochs: int | None = None,
) -> LoadedWeights:
    """Load FP32 weights for `model` trained on `dataset`.

    `weights` may be a checkpoint path, "random" (untrained, for speed and size only), or None:
    `find_fp32_checkpoint`'s choice (cache or the repository's trained/), else one trained with
    the quick recipe first if `train_if_missing`
    (for `train_epochs` epochs when given, else the recipe's).
    """
    from zoo.data import load_card

    entry = get_entry(model)
    card = load_card(dataset)
    if weights == "random":
        net = entry.build(num_classes=card.num_classes, **({"aux": False} if entry.aux_weights else {}))
        return LoadedWeights(model=net, num_classes=card.num_classes, meta={"weights": "random"},
                             preprocess=None, sha256="", path=Path("random"))
    if weights is None:
        path = find_fp32_checkpoint(entry.name, dataset, artifacts)
        if path is not None:
            print(f"[edgezoo] {entry.name} on {dataset}: FP32 weights {path} (pass --weights to use others)",
                  file=sys.stderr, flush=True)
        if path is None:
            if not train_if_missing:
                raise CheckpointError(
                    f"no FP32 checkpoint for {entry.name} on {dataset} in {checkpoint_dir(entry.name, dataset, '*', artifacts).parent}; "
                    f"train one with: python -m zoo.train --model {entry.name} --data {dataset}, or pass --weights PATH"
                )
            print(f"[edgezoo] no FP32 checkpoint for {entry.name} on {dataset}: training one with the quick "
                  "recipe (a few minutes on a CPU; cached for next time)", file=sys.stderr, flush=True)
            if entry.task == "detection":
                from zoo.det.train import DetTrainConfig, train_detector

                result = train_detector(DetTrainConfig(model=entry.name, data=dataset, data_root=data_root,
                                                       recipe="quick", epochs=train_epochs, artifacts=artifacts,
                                                       threads=threads, progress=progress))
            else:
                from zoo.train import TrainConfig, train

                result = train(TrainConfig(model=entry.name, data=dataset, data_root=data_root, recipe="quick",
                                           epochs=train_epochs, artifacts=artifacts, threads=threads,
                                           progress=progress))
            path = result["best"]
        weights = path
    return load_weights(entry, weights, num_classes=card.num_classes)


@dataclass
class LoadedVariant:
    """A network in one variant, ready for one backend.

    `runner` is the loaded benchmark backend (``runner.infer(batch_nchw_float32) -> logits``);
    `model` is the ``nn.Module`` for the PyTorch backends (for static / QAT: real INT8 kernels as a
    frozen TorchScript module traced at `input_hw` and `batch`, or an FX GraphModule where that
    export failed; `artifact["fx_int8"]["format"]` says which);
    `path` is the artifact file (checkpoint, ONNX / QDQ ONNX, INT8 TorchScript) and `artifact` its provenance
    (parent FP32 sha256, calibration hash and method, library versions, ...).
    """

    name: str
    variant: str
    backend: str
    path: Path
    artifact: dict[str, Any]
    runner: Any
    model: Any = None
    num_classes: int = 0
    preprocess: dict[str, Any] = field(default_factory=dict)


def load(model: str, variant: str = "fp32", *, backend: str | None = None, dataset: str = "synthetic",
         weights: str | Path | None = None, artifacts: str | Path | None = None,
         data_root: str | Path | None = None, input_hw: tuple[int, int] | None = None, batch: int = 1,
         threads: int = 2, calib_images: int = 256, calib_method: str | None = None,
         progress: bool = True, **kwargs: Any) -> Any:
    """Load `model` in one of the four variants.

    Without `backend` and with variant "fp32" this is `load_fp32` (a `LoadedWeights` with the
    ``nn.Module``). With a `backend` ("torch", "onnxruntime", "tensorrt", ...) it returns a
    `LoadedVariant`: the cached artifact for (model, dataset, variant, backend, input size),
    produced first when missing (announced: export, calibration, or QAT fine-tuning), loaded on
    that backend. The artifacts are exactly the ones `python -m bench.run` measures.
    `calib_method` (static PTQ: "minmax", "percentile", "entropy") defaults to the dataset task's
    for the backend (`quant.calibrate.resolve_calib_method`: percentile on ONNX
    Runtime / TensorRT for both tasks, entropy on PyTorch).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    if backend is None and variant == "fp32":
        return load_fp32(model, dataset=dataset, weights=weights, artifacts=artifacts, data_root=data_root,
                         progress=progress, **kwargs)
    # The variant producers live in `quant` and the backends in `bench`, above `zoo` in the
    # layering; this one entry point reaches up to them lazily (nothing in `zoo` imports them at
    # import time), so the public API can offer every variant from one place.
    from bench.backends import get_backend
    from bench.runner import BenchConfig, prepare_model
    from zoo.data import load_card

    backend = backend or "torch"
    cfg = BenchConfig(models=[model], variants=[variant], backends=[backend], data=dataset,
                      data_root=str(data_root) if data_root else None, weights=str(weights) if weights else None,
                      artifacts=str(artifacts) if artifacts else None, threads=threads, calib_images=calib_images,
                      calib_method=calib_method, progress=progress)
    bcls = get_backend(backend)
    ok, reason = bcls.available()
    if not ok:
        raise RuntimeError(f"backend {backend!r} is not available here: {reason}")
    from bench.runner import variant_support

    ok, reason = variant_support(variant, bcls, cfg)
    if not ok:
        raise ValueError(f"{variant} on {backend}: {reason}")
    log = (lambda m: print(f"[edgezoo] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    prep = prepare_model(cfg, model)
    hw = tuple(input_hw) if input_hw else tuple(load_card(dataset).input_size)
    art = prep.variant_artifact(cfg, bcls.artifact_kind, variant, backend, hw, batch, log)
    runner = bcls()
    runner.load(art, threads=threads)
    return LoadedVariant(name=prep.model, variant=variant, backend=backend, path=Path(art["path"]), artifact=art,
                         runner=runner, model=getattr(runner, "model", None), num_classes=prep.num_classes,
                         preprocess=prep.preprocess)
