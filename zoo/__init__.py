"""Edge-vision model zoo: networks, datasets, FP32 training and evaluation.

    import zoo
    zoo.list_models()                      # registered networks
    net = zoo.build("ddrnet", num_classes=11)
    loaded = zoo.load("espnet", weights="espnet_p_2_q_8_camvid.pth", dataset="camvid")
    int8 = zoo.load("ddrnet", "static", backend="onnxruntime")   # cached or produced (announced)
    int8.runner.infer(batch)                                     # logits; int8.path, int8.artifact

The public names are imported lazily, so light submodules (`zoo.io`, `zoo.data.cards`) can be
used without importing torch (the benchmark's ONNX Runtime cells rely on that).
"""
from __future__ import annotations

from typing import Any

__all__ = ["VARIANTS", "build", "get_entry", "list_models", "load", "load_fp32"]


def __getattr__(name: str) -> Any:
    if name in ("VARIANTS", "load", "load_fp32"):
        from zoo import api

        return getattr(api, name)
    if name in ("build", "get_entry", "list_models"):
        from zoo import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
