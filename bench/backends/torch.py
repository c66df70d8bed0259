"""PyTorch eager backend: `torch` on the CPU, `torch-cuda` on the first CUDA GPU."""
from __future__ import annotations

import numpy as np

from bench.backends import BackendUnavailable


class TorchBackend:
    name = "torch"
    artifact_kind = "torch"
    device = "cpu"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"torch not importable: {exc}"
        return True, ""

    def load(self, artifact: dict, *, threads: int, options: dict | None = None) -> None:
        import torch

        from zoo.checkpoints import load_state
        from zoo.registry import get_entry

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (only possible before any parallel work)
            pass
        entry = get_entry(artifact["model"])
        kwargs = {"aux": False} if entry.aux_weights else {}
        model = entry.build(num_classes=artifact["num_classes"], **kwargs).eval()
        state = torch.load(artifact["path"], map_location="cpu", weights_only=True)
        load_state(model, state, source=artifact["path"])
        if artifact.get("dynamic_quant"):
            # PyTorch dynamic quantization touches only Linear/LSTM layers; the artifact's "quant"
            # metadata says how many were INT8 (zero for a conv-only network).
            from quant.ptq_dynamic import quantize_dynamic_torch

            model, _ = quantize_dynamic_torch(model)
        self._torch = torch
        self._device = torch.device(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.model = model.to(self._device)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device != "cpu":
                x = x.to(self._device, non_blocking=False)
            # .cpu() on a CUDA tensor waits for the kernels, so the call is synchronous.
            return self.model(x).cpu().numpy()

    def info(self) -> dict:
        torch = self._torch
        out = {"torch_threads": torch.get_num_threads(), "device": self.device}
        if self.device == "cuda":
            out["gpu"] = torch.cuda.get_device_name(0)
        return out

    def gpu_memory(self) -> dict | None:
        if self.device != "cuda":
            return None
        torch = self._torch
        return {"max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                "max_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}


class TorchCudaBackend(TorchBackend):
    name = "torch-cuda"
    device = "cuda"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import torch
        except ImportError as exc:
            return False, f"torch not importable: {exc}"
        if not torch.cuda.is_available():
            return False, "no CUDA GPU" + (" (torch built without CUDA)" if torch.version.cuda is None else "")
        return True, ""

    def load(self, artifact: dict, *, threads: int, options: dict | None = None) -> None:
        ok, reason = self.available()
        if not ok:
            raise BackendUnavailable(reason)
        super().load(artifact, threads=threads, options=options)
