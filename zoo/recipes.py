"""Training recipes, one per family, plus the `quick` recipe that `bench.run` uses when no
checkpoint exists yet. A recipe is plain data so that it can be stored in every checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    crop: tuple[int, int]             # training crop (H, W)
    optimizer: str                    # "sgd" | "adamw"
    lr: float
    weight_decay: float
    momentum: float = 0.9
    poly_power: float = 0.9           # lr = base * (1 - it/total) ** power
    warmup_iters: int = 0
    loss: str = "ce"                  # "ce" | "ohem" | "cb_ce" | "cb_focal" | "lovasz" (zoo.losses)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    scale_range: tuple[float, float] = (0.5, 2.0)
    eval_every: int = 5               # epochs between validation runs
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> "Recipe":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


RECIPES: dict[str, Recipe] = {
    # DDRNet (Hong et al.; chenjun2hao/DDRNet.pytorch configs) fine-tunes from ImageNet with SGD
    # 0.01, poly 0.9, OHEM (0.9, 131072) and the aux head at 0.4. We train from scratch on a CPU
    # with no ImageNet start, so we keep the loss, aux weight and poly schedule but use AdamW
    # (faster from-scratch convergence in a fixed iteration budget) and 288x384 crops of the
    # randomly scaled 360x480 images (about half the cost per step of full-size crops).
    "ddrnet": Recipe(
        name="ddrnet", epochs=300, batch_size=8, crop=(288, 384), optimizer="adamw", lr=1e-3,
        weight_decay=1e-2, warmup_iters=200, loss="ohem", loss_kwargs={"thresh": 0.9, "min_kept": 131072},
        eval_every=10, notes="DDRNet loss/aux/poly with AdamW, from scratch, 288x384 crops",
    ),
    # ESPNet (Mehta et al.): Adam 5e-4, wd 5e-4 in the official code; plain cross-entropy.
    "espnet": Recipe(
        name="espnet", epochs=300, batch_size=8, crop=(360, 480), optimizer="adamw", lr=5e-4,
        weight_decay=5e-4, loss="ce", poly_power=0.9, eval_every=10, notes="ESPNet recipe (Adam, poly, CE)",
    ),
    # A few minutes on 2 CPU cores: enough for a meaningful benchmark cell on the synthetic data,
    # not a converged model. bench.run announces when it uses it.
    "quick": Recipe(
        name="quick", epochs=12, batch_size=8, crop=(256, 256), optimizer="adamw", lr=2e-3,
        weight_decay=1e-4, warmup_iters=20, loss="ce", scale_range=(0.75, 1.5), eval_every=6,
        notes="quick recipe for first-run benchmarks (minutes on a CPU), not converged",
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; valid recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
