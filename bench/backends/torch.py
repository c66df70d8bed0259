"""PyTorch eager backend: `torch` on the CPU, `torch-cuda` on the first CUDA GPU."""
from __future__ import annotations

import time

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
        self.convert_s = None
        fx_int8 = artifact.get("fx_int8")
        if fx_int8 and fx_int8["mode"] == "qat":
            from quant.fx_quant import convert_int8
            from quant.qat import load_qat

            prepared, _ = load_qat(entry.name, artifact["path"], num_classes=artifact["num_classes"])
            t0 = time.perf_counter()
            model = convert_int8(prepared)
            self.convert_s = time.perf_counter() - t0
        else:
            model = entry.build(num_classes=artifact["num_classes"], **kwargs).eval()
        if fx_int8 and fx_int8["mode"] == "ptq":
            from quant.torch_ptq import load_static_torch

            t0 = time.perf_counter()
            model = load_static_torch(model, artifact["path"], reduce_range=fx_int8["reduce_range"])
            self.convert_s = time.perf_counter() - t0
        elif not fx_int8:
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
        if self.convert_s is not None:  # FX INT8: graph conversion + weight packing ("compile" time)
            out.update(int8_convert_s=round(self.convert_s, 3), quantized_engine=torch.backends.quantized.engine)
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
