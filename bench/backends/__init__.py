"""Inference backends as optional plugins: heavy imports happen inside each backend, and
`available()` says whether it can run here (and why not), so a missing runtime becomes a
skipped cell instead of a crash."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str

    @classmethod
    def available(cls) -> tuple[bool, str]: ...

    def load(self, artifact: dict, *, threads: int) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


BACKENDS = ("torch", "onnxruntime")


def get_backend(name: str) -> type:
    if name == "torch":
        from bench.backends.torch import TorchBackend

        return TorchBackend
    if name == "onnxruntime":
        from bench.backends.onnxruntime import OrtBackend

        return OrtBackend
    raise KeyError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}, all")
