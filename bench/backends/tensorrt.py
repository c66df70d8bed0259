"""TensorRT backend: an engine built from the ONNX artifact, run with the name-based tensor API.

* FP32 variant -> FP16 engine by default (`--trt-precision fp32` keeps FP32); quantized variants
  (QDQ ONNX from issue #3) -> INT8 engine (explicit quantization: the Q/DQ scales are used).
* Optional DLA core (`--dla-core N`, Jetson Xavier/Orin) with GPU fallback for layers the DLA
  cannot run.
* Engines and the builder's timing cache are cached under
  `<artifacts>/trt/trt-<TensorRT version>/<GPU name>/`, because an engine is only valid for the
  TensorRT version and GPU that built it. The engine file name also carries the ONNX sha256,
  precision, DLA core and workspace, so a changed input never reuses a stale engine.
* Runs on TensorRT >= 8.5 (JetPack 5) and 10+: it uses only `num_io_tensors`,
  `get_tensor_name/mode/shape/dtype`, `set_tensor_address` and `execute_async_v3`, which exist
  in both; the EXPLICIT_BATCH network flag is passed only before TensorRT 10 (10 ignores and
  deprecates it).
* Device buffers are torch CUDA tensors (`data_ptr()` goes to `set_tensor_address`), copied
  on one CUDA stream through pinned host buffers; `infer` returns a host array after
  synchronising, so each timed call is host end to end. GPU compute time alone is measured with
  CUDA events around `execute_async_v3` (`gpu_compute_ms` in the record).

Not run in this project's CI without a GPU: `available()` turns it into a skipped cell.
Install: JetPack ships TensorRT's Python bindings (use a venv with --system-site-packages);
elsewhere `pip install tensorrt` (see docs/benchmarking.md, "[trt]").
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from bench.backends import BackendUnavailable

MIN_VERSION = (8, 5)
INSTALL_HINT = "tensorrt not installed: pip install tensorrt (JetPack: python3-libnvinfer, venv with --system-site-packages)"


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "gpu"


class TensorrtBackend:
    name = "tensorrt"
    artifact_kind = "onnx"
    device = "cuda"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import tensorrt as trt
        except ImportError:
            return False, INSTALL_HINT
        except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer) is "not usable"
            return False, f"tensorrt failed to import ({type(exc).__name__}: {exc})"
        if _version_tuple(trt.__version__) < MIN_VERSION:
            return False, f"TensorRT {trt.__version__} is too old: the name-based tensor API needs >= 8.5"
        try:
            import torch
        except ImportError:
            return False, "the tensorrt backend allocates device buffers with torch, which is not importable"
        if not torch.cuda.is_available():
            return False, "no CUDA GPU"
        return True, ""

    @classmethod
    def precision(cls, variant: str, options: dict) -> str:
        if variant != "fp32":
            return "int8"
        return options.get("trt_precision", "fp16")

    # -- engine build (cached) ------------------------------------------------------------------
    def _paths(self, artifact: dict, options: dict) -> tuple[Path, Path, str]:
        import tensorrt as trt
        import torch

        gpu = torch.cuda.get_device_name(0)
        root = Path(options.get("cache_dir") or "artifacts/trt") / f"trt-{trt.__version__}" / _slug(gpu)
        precision = self.precision(options.get("variant", "fp32"), options)
        dla = options.get("dla_core")
        ws = int(options.get("workspace_mb", 1024))
        name = f"{artifact['sha256'][:16]}_{precision}{'' if dla is None else f'_dla{dla}'}_ws{ws}.engine"
        return root / name, root / "timing.cache", precision

    def prepare(self, artifact: dict, options: dict) -> dict:
        """Build the engine unless cached; returns {"engine", "cached", "build_s", ...}."""
        import tensorrt as trt

        from zoo.io import write_bytes

        engine_path, cache_path, precision = self._paths(artifact, options)
        info = {"engine": str(engine_path), "timing_cache": str(cache_path), "precision": precision,
                "dla_core": options.get("dla_core"), "tensorrt": trt.__version__}
        if engine_path.is_file():
            return {**info, "cached": True, "build_s": 0.0}
        t0 = time.perf_counter()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if _version_tuple(trt.__version__) < (10,):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(artifact["path"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {artifact['path']}: {errors[:400]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.get("workspace_mb", 1024)) << 20)
        if precision == "fp16":
            flag = getattr(trt.BuilderFlag, "FP16", None)
            if flag is None:
                raise BackendUnavailable(f"TensorRT {trt.__version__} has no FP16 builder flag; use --trt-precision fp32")
            config.set_flag(flag)
        elif precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization from the QDQ graph
        dla = options.get("dla_core")
        if dla is not None:
            if builder.num_DLA_cores <= int(dla):
                raise BackendUnavailable(f"DLA core {dla} requested, this device has {builder.num_DLA_cores}")
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(dla)
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        timing_cache = config.create_timing_cache(blob)
        config.set_timing_cache(timing_cache, False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
        write_bytes(engine_path, bytes(serialized))
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
        return {**info, "cached": False, "build_s": time.perf_counter() - t0}

    # -- runtime --------------------------------------------------------------------------------
    def load(self, artifact: dict, *, threads: int, options: dict | None = None) -> None:
        import tensorrt as trt
        import torch

        options = options or {}
        engine_path, _, precision = self._paths(artifact, options)
        if not engine_path.is_file():
            self.prepare(artifact, options)
        self._torch = torch
        self._trt = trt
        self.precision_used = precision
        self.engine_path = engine_path
        free0, total = torch.cuda.mem_get_info()
        self._free0 = free0
        self._total = total
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if options.get("dla_core") is not None:
            self.runtime.DLA_core = int(options["dla_core"])
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path} (built by another version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.inputs: list[tuple[str, torch.Tensor, torch.Tensor]] = []    # name, pinned host, device
        self.outputs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"tensor {name} has a dynamic shape {shape}; the harness exports static shapes")
            np_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            t_dtype = torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
            dev = torch.empty(shape, dtype=t_dtype, device="cuda")
            host = torch.empty(shape, dtype=t_dtype, pin_memory=True)
            self.context.set_tensor_address(name, dev.data_ptr())
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append((name, host, dev))
            else:
                self.outputs.append((name, host, dev))
        if len(self.inputs) != 1 or not self.outputs:
            raise RuntimeError(f"expected one input and at least one output, engine has "
                               f"{len(self.inputs)} inputs and {len(self.outputs)} outputs")
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.device_times_ms: list[float] = []
        torch.cuda.synchronize()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        _, in_host, in_dev = self.inputs[0]
        in_host.numpy()[...] = batch  # casts if the engine's input type differs
        with torch.cuda.stream(self.stream):
            in_dev.copy_(in_host, non_blocking=True)
            self._start.record(self.stream)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("execute_async_v3 failed")
            self._end.record(self.stream)
            for _, host, dev in self.outputs:
                host.copy_(dev, non_blocking=True)
        self.stream.synchronize()
        self.device_times_ms.append(self._start.elapsed_time(self._end))
        # A copy: the pinned buffer is overwritten by the next call.
        return self.outputs[0][1].numpy().copy()

    def reset_device_times(self) -> None:
        self.device_times_ms = []

    def info(self) -> dict:
        return {"tensorrt": self._trt.__version__, "gpu": self._torch.cuda.get_device_name(0),
                "engine": str(self.engine_path), "precision": self.precision_used}

    def gpu_memory(self) -> dict | None:
        torch = self._torch
        free, total = torch.cuda.mem_get_info()
        size = getattr(self.engine, "device_memory_size_v2", None)
        if size is None:
            size = getattr(self.engine, "device_memory_size", None)
        return {"used_delta_mb": (self._free0 - free) / 2**20, "total_mb": total / 2**20,
                "engine_activation_mb": size / 2**20 if size is not None else None,
                "torch_allocated_mb": torch.cuda.max_memory_allocated() / 2**20}
