"""Public Python API: the same code paths the CLIs use."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from zoo.checkpoints import CheckpointError, LoadedWeights, checkpoint_dir, load_weights
from zoo.registry import get_entry

VARIANTS = ("fp32", "qat", "static", "dynamic")


def find_fp32_checkpoint(model: str, dataset: str, artifacts: str | Path | None = None) -> Path | None:
    """The best cached FP32 checkpoint for (model, dataset): the family recipe first, then `quick`."""
    entry = get_entry(model)
    for recipe in (entry.default_recipe, "quick"):
        path = checkpoint_dir(entry.name, dataset, recipe, artifacts) / "best.pt"
        if path.is_file():
            return path
    return None


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
    the cached checkpoint, trained with the quick recipe first if missing and `train_if_missing`
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
        if path is None:
            if not train_if_missing:
                raise CheckpointError(
                    f"no FP32 checkpoint for {entry.name} on {dataset} in {checkpoint_dir(entry.name, dataset, '*', artifacts).parent}; "
                    f"train one with: python -m zoo.train --model {entry.name} --data {dataset}, or pass --weights PATH"
                )
            from zoo.train import TrainConfig, train

            print(f"[edgezoo] no FP32 checkpoint for {entry.name} on {dataset}: training one with the quick "
                  "recipe (a few minutes on a CPU; cached for next time)", file=sys.stderr, flush=True)
            result = train(TrainConfig(model=entry.name, data=dataset, data_root=data_root, recipe="quick",
                                       epochs=train_epochs, artifacts=artifacts, threads=threads, progress=progress))
            path = result["best"]
        weights = path
    return load_weights(entry, weights, num_classes=card.num_classes)


def load(model: str, variant: str = "fp32", **kwargs: Any) -> LoadedWeights:
    """Load `model` in one of the four variants (only fp32 is implemented so far)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    if variant != "fp32":
        raise NotImplementedError(f"variant {variant!r} is not implemented yet (quantization: issue #3); use fp32")
    return load_fp32(model, **kwargs)
