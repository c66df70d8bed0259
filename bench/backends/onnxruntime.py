"""ONNX Runtime backends: the CPU execution provider, and the CUDA and TensorRT providers.

ONNX Runtime silently falls back to the CPU when a requested GPU provider is compiled in but
cannot start (missing CUDA/cuDNN/TensorRT libraries); `load` checks which provider the session
really got and refuses to measure a CPU run under a GPU backend's name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.backends import BackendUnavailable


class OrtBackend:
    name = "onnxruntime"
    artifact_kind = "onnx"
    device = "cpu"
    provider = "CPUExecutionProvider"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime not installed ({exc}); pip install onnxruntime"
        if cls.provider not in ort.get_available_providers():
            return False, (f"{cls.provider} not in this onnxruntime build (has: "
                           f"{', '.join(ort.get_available_providers())}); {cls.install_hint()}")
        return True, ""

    @staticmethod
    def install_hint() -> str:
        return "pip install onnxruntime"

    def providers(self, options: dict) -> list:
        return ["CPUExecutionProvider"]

    def load(self, artifact: dict, *, threads: int, options: dict | None = None) -> None:
        import onnxruntime as ort

        options = options or {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Session config entries a cell asks for (e.g. bench.instances: session.force_spinning_stop);
        # recorded in info() so that a record says how its session differed from ORT's defaults.
        self._session_config = {k: str(v) for k, v in (options.get("ort_session_config") or {}).items()}
        for key, value in self._session_config.items():
            opts.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(artifact["path"], opts, providers=self.providers(options))
        got = self.session.get_providers()
        if not got or got[0] != self.provider:
            raise BackendUnavailable(f"{self.provider} could not start (session runs on {got}); "
                                     "check the CUDA/cuDNN/TensorRT libraries")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [self.session.get_outputs()[0].name]
        self._version = ort.__version__

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self.output_names, {self.input_name: batch})[0]

    def info(self) -> dict:
        info = {"providers": self.session.get_providers(), "onnxruntime": self._version}
        if getattr(self, "_session_config", None):
            info["session_config"] = self._session_config
        return info

    def gpu_memory(self) -> dict | None:
        return None


class OrtCudaBackend(OrtBackend):
    name = "onnxruntime-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"

    @staticmethod
    def install_hint() -> str:
        return "pip install onnxruntime-gpu (or the Jetson Zoo wheel) on a machine with a CUDA GPU"

    def providers(self, options: dict) -> list:
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


class OrtTensorrtBackend(OrtBackend):
    name = "onnxruntime-trt"
    device = "cuda"
    provider = "TensorrtExecutionProvider"

    @staticmethod
    def install_hint() -> str:
        return "needs onnxruntime-gpu built with TensorRT, and TensorRT libraries"

    @classmethod
    def precision(cls, variant: str, options: dict) -> str:
        if variant != "fp32":
            return "int8"
        return options.get("trt_precision", "fp16")

    def providers(self, options: dict) -> list:
        cache = Path(options.get("cache_dir") or "artifacts/trt") / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        trt_opts = {
            "device_id": 0,
            "trt_fp16_enable": options.get("trt_precision", "fp16") == "fp16",
            "trt_int8_enable": bool(options.get("int8", False)),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
        }
        if options.get("dla_core") is not None:
            trt_opts.update(trt_dla_enable=True, trt_dla_core=int(options["dla_core"]))
        return [("TensorrtExecutionProvider", trt_opts), ("CUDAExecutionProvider", {"device_id": 0}),
                "CPUExecutionProvider"]

