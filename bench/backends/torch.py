"""PyTorch eager backend (CPU, or CUDA when present)."""
from __future__ import annotations

import numpy as np


class TorchBackend:
    name = "torch"
    artifact_kind = "torch"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"torch not importable: {exc}"
        return True, ""

    def load(self, artifact: dict, *, threads: int) -> None:
        import torch

        from zoo.checkpoints import load_state
        from zoo.registry import get_entry

        torch.set_num_threads(threads)
        entry = get_entry(artifact["model"])
        kwargs = {"aux": False} if entry.aux_weights else {}
        self.model = entry.build(num_classes=artifact["num_classes"], **kwargs).eval()
        state = torch.load(artifact["path"], map_location="cpu", weights_only=True)
        load_state(self.model, state, source=artifact["path"])
        self._torch = torch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch)).numpy()
