"""PyTorch eager backend: `torch` on the CPU, `torch-cuda` on the first CUDA GPU."""
from __future__ import annotations

import time
import warnings

import numpy as np

from bench.backends import BackendUnavailable

# PyTorch's quantized CPU engine (quant.fx_quant.ENGINE; not imported here, so that loading a
# TorchScript INT8 artifact pulls in no FX quantization code).
QUANT_ENGINE = "x86"


def _build(artifact: dict):
    """The artifact's network, built with the options it was made with (bench.runner records them
    as `build_kwargs`): the registry's defaults would give another network for e.g. a ReLU or
    Focus-stem YOLOv5, whose weights load all the same because activations have none."""
    from zoo.registry import get_entry

    entry = get_entry(artifact["model"])
    kwargs = artifact.get("build_kwargs")
    if kwargs is None:
        kwargs = (artifact.get("fx_int8") or {}).get("build_kwargs")
    if kwargs is None:  # an artifact dict made before build_kwargs were recorded
        kwargs = {"aux": False} if entry.aux_weights else {}
    return entry.build(num_classes=artifact["num_classes"], **kwargs).eval()


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

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (only possible before any parallel work)
            pass
        fx_int8 = artifact.get("fx_int8") or {}
        self.convert_s = None
        self._fixed_shape = None
        self.fx_int8 = fx_int8
        if fx_int8.get("format") == "torchscript":
            # The INT8 model was converted once when the artifact was built (bench.runner
            # `_int8_torchscript`, which times it: `fx_int8["convert_s"]`); loading the frozen
            # TorchScript needs neither FX nor the float network, which keeps this process's
            # peak RAM below FP32's. torch.jit.load runs the file's code: acceptable because it is
            # our own locally built artifact from the artifact cache, never a downloaded file.
            if QUANT_ENGINE in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = QUANT_ENGINE  # packed weights are re-packed for it on load
            with warnings.catch_warnings():  # "torch.jit is deprecated": see quant.fx_quant.quiet_jit_deprecation
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=FutureWarning)
                model = torch.jit.load(artifact["path"], map_location="cpu").eval()
            self.convert_s = fx_int8.get("convert_s")
            # Tracing fixed the graph's shape arithmetic (upsampling sizes, detection grids) at one
            # input shape; another shape could run and give wrong outputs, so it is refused.
            shape = fx_int8.get("input_shape")
            self._fixed_shape = tuple(shape) if shape else None
        elif fx_int8.get("mode") == "qat":
            from quant.fx_quant import convert_int8
            from quant.qat import load_qat

            # load_qat rebuilds the network with the builder options the QAT checkpoint recorded.
            prepared, _ = load_qat(artifact["model"], artifact["path"], num_classes=artifact["num_classes"])
            t0 = time.perf_counter()
            model = convert_int8(prepared)
            self.convert_s = time.perf_counter() - t0
        elif fx_int8.get("mode") == "ptq":
            from quant.torch_ptq import load_static_torch

            model = _build(artifact)
            t0 = time.perf_counter()
            model = load_static_torch(model, artifact["path"], reduce_range=fx_int8["reduce_range"])
            self.convert_s = time.perf_counter() - t0
        else:
            from zoo.checkpoints import load_state

            model = _build(artifact)
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
        if self._fixed_shape is not None and tuple(batch.shape) != self._fixed_shape:
            raise ValueError(f"this INT8 TorchScript artifact was traced for input shape {list(self._fixed_shape)}, "
                             f"got {list(batch.shape)}; make the artifact for that input size and batch")
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
            fx = self.fx_int8
            scripted = fx.get("format") == "torchscript"
            out.update(int8_convert_s=round(self.convert_s, 3), quantized_engine=torch.backends.quantized.engine,
                       int8_format=fx.get("format", "fx-state"),
                       # where the conversion ran: once when the artifact was built, or in this cell
                       int8_convert_in="artifact build" if scripted else "cell")
            if scripted:
                out["int8_script_s"] = fx.get("script_s")
            elif fx.get("torchscript_error"):
                out["int8_torchscript_error"] = fx["torchscript_error"]
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
        import torch

        # cuDNN runs FP32 convolutions in TF32 by default on Ampere and newer GPUs (10-bit mantissa):
        # a cell labelled fp32 must compute in FP32, so TF32 is switched off for convolutions and matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        super().load(artifact, threads=threads, options=options)

    def info(self) -> dict:
        torch = self._torch
        return {**super().info(), "tf32": bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)}
