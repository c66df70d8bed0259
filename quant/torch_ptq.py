"""Static post-training quantization for PyTorch's own INT8 CPU kernels (FX graph mode, x86 engine).

The artifact is the *calibrated observer state* of the prepared graph (a tensor-only state dict,
loadable with ``weights_only=True``), not a converted model: converted modules hold packed fbgemm
weights that only pickle as opaque objects. `load_static_torch` rebuilds the graph, restores the
observers and converts it to INT8 kernels; the benchmark records that conversion apart from
inference as the variant's compile time.

Activations are per-tensor affine uint8 (which keeps the full range after ReLUs), observed as the
calibration method says (`fx_quant.activation_observer`: minmax, percentile as ONNX Runtime cuts
it, or entropy, torch's L2 histogram search); weights per-channel symmetric int8 from their
min/max whatever the method, as in ONNX Runtime. The method is recorded in the sidecar, and the
observer state only loads back into the same observers. On x86 CPUs without
AVX512-VNNI (`fx_quant.int8_pairs_saturate`: fbgemm has no AVX-VNNI kernels, so `cpu_has_vnni`,
which counts AVX-VNNI for ONNX Runtime, is not the test here) activations use 7 bits
(`reduce_range`) so fbgemm's int16 pair sums (127 * 127 * 2 < 32767) cannot saturate.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from quant import fx_quant
from quant.calibrate import CalibrationData, QuantError, resolve_calib_method
from zoo.io import atomic_path, sha256_file, write_json

PREPARE_HW = (64, 64)


# Observer state files from before the method was recorded were calibrated with histogram observers.
LEGACY_METHOD = "entropy"


def quantize_static_torch(model: nn.Module, calib: CalibrationData, out: str | Path, *, method: str = "entropy",
                          parent_sha256: str = "", build_kwargs: dict[str, Any] | None = None,
                          float_head: bool = False) -> dict[str, Any]:
    """Calibrate FX observers (`method`: minmax, percentile, entropy) on `calib` and save their
    state to `out` (+ a JSON sidecar); returns the metadata. `float_head` keeps the classifier
    convolution in float (the "head" float op) so a segmentation network's logits stay float,
    as in the ONNX Runtime artifact."""
    if calib.size == 0:
        raise QuantError("calibration data is empty; build it with quant.calibrate.build_calibration")
    out = Path(out)
    method = resolve_calib_method(method, task="")  # a named method: validated and lower-cased
    reduce_range = fx_quant.int8_pairs_saturate()
    started = time.perf_counter()
    float_ops = list(fx_quant.int8_float_ops(model, float_head=float_head))
    prepared = fx_quant.prepare(model, qat=False, input_hw=PREPARE_HW, scheme="affine", reduce_range=reduce_range,
                                calib_method=method, float_ops=float_ops)
    n = fx_quant.calibrate(prepared, calib.arrays)
    with atomic_path(out) as tmp:
        torch.save(prepared.state_dict(), tmp)
    meta = {
        "variant": "static", "target": "torch-fx", "engine": fx_quant.ENGINE, "scheme": "affine",
        "method": method, "observer": fx_quant.activation_observer(method).__name__, "per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8",
        "reduce_range": reduce_range, "cpu_int8_pairs_saturate": reduce_range, "calibrated_batches": n,
        "float_ops": float_ops, "float_modules": fx_quant.float_module_names(model, float_ops),
        "build_kwargs": build_kwargs or {},
        "quantizers": fx_quant.count_quantizers(prepared), "calibration": calib.as_dict(),
        "parent": {"sha256": parent_sha256}, "path": str(out), "sha256": sha256_file(out),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out.with_suffix(".json"), meta)
    return meta


def recorded_method(path: str | Path) -> str:
    """The calibration method an observer state file was made with, from its JSON sidecar."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        raise QuantError(f"'{sidecar}' is missing, so the calibration method of '{path}' is unknown; "
                         "pass method= to load_static_torch or calibrate again")
    method = json.loads(sidecar.read_text()).get("method")
    return LEGACY_METHOD if method in (None, "histogram") else str(method)


def recorded_float_ops(path: str | Path) -> list[str]:
    """The op kinds an observer state file was calibrated with in float (`fx_quant.FLOAT_OPS`),
    from its JSON sidecar: none for files from before they were recorded."""
    sidecar = Path(path).with_suffix(".json")
    return list(json.loads(sidecar.read_text()).get("float_ops") or []) if sidecar.is_file() else []


def load_static_torch(model: nn.Module, path: str | Path, *, reduce_range: bool,
                      method: str | None = None) -> nn.Module:
    """Rebuild the calibrated graph of `model` (an FP32 network with its weights) from `path` and
    convert it to INT8 kernels. `method` (default: what the sidecar records) picks the observers
    the state loads into; the float ops are the ones it was calibrated with."""
    from zoo.checkpoints import CheckpointError

    method = method or recorded_method(path)
    prepared = fx_quant.prepare(model, qat=False, input_hw=PREPARE_HW, scheme="affine", reduce_range=reduce_range,
                                calib_method=method, float_ops=recorded_float_ops(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = prepared.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"calibration state '{path}' does not fit this network: missing "
                              f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return fx_quant.convert_int8(prepared)
