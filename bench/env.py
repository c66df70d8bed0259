"""The environment every result record carries, so numbers can be traced to a machine and commit.

Library versions are read from the installed package metadata, not by importing the packages:
importing tensorrt or onnxruntime-gpu in the sweep's parent would initialise CUDA there.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8",
             "amx_bf16", "amx_tile", "neon", "asimd", "asimdhp", "asimddp", "fphp", "sve", "i8mm", "bf16")


def _cpu_info() -> dict:
    info = {"model": platform.processor() or platform.machine(), "flags": [], "machine": platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and info["model"] in ("", platform.machine(), platform.processor()):
            info["model"] = value.strip()
        elif key in ("flags", "Features") and not info["flags"]:
            info["flags"] = sorted(set(value.split()) & set(CPU_FLAGS))
    try:  # Jetson and other ARM boards have no "model name"; the device tree names the board
        dt = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace")
        if dt:
            info["board"] = dt
    except OSError:
        pass
    return info


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _git() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _dist_version(*names: str) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - optional
        return None


def _nvidia_smi() -> list[dict] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            gpus.append({"name": parts[0], "driver": parts[1],
                         "memory": parts[2] if len(parts) > 2 else None,
                         "max_sm_clock": parts[3] if len(parts) > 3 else None})
    return gpus or None


def _jetson() -> dict | None:
    release = _read("/etc/nv_tegra_release")
    if release is None:
        return None
    info: dict = {"l4t": release.splitlines()[0]}
    nvp = shutil.which("nvpmodel")
    if nvp:
        try:
            q = subprocess.run([nvp, "-q"], capture_output=True, text=True, timeout=10)
            info["nvpmodel"] = " ".join(q.stdout.split())[:200] or None
        except (OSError, subprocess.SubprocessError):
            pass
    info["jetpack"] = _dist_version("nvidia-jetpack")
    return info


@lru_cache(maxsize=1)
def environment() -> dict:
    """Machine, libraries and commit; computed once per sweep (the parent already has torch)."""
    import torch

    from zoo.hardware import allocator_in_use

    gpu = None
    if torch.cuda.is_available():
        smi = _nvidia_smi()
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
               "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
               "driver": smi[0]["driver"] if smi else None, "nvidia_smi": smi}
    return {
        "cpu": _cpu_info(),
        "cores_logical": os.cpu_count(),
        "cores_physical": _physical_cores(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # A preloaded allocator changes timings (cells inherit the sweep's environment).
        "allocator": allocator_in_use(),
        "ld_preload": os.environ.get("LD_PRELOAD") or None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-training"),
        "onnx": _dist_version("onnx"),
        "openvino": _dist_version("openvino"),
        "numpy": _dist_version("numpy"),
        "tensorrt": _dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_cu12_libs") or _trt_system(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": gpu,
        "jetson": _jetson(),
        "git": _git(),
    }


def _trt_system() -> str | None:
    """JetPack installs TensorRT's Python bindings as a Debian package, without pip metadata."""
    for base in ("/usr/lib/python3/dist-packages", "/usr/lib/python3.8/dist-packages"):
        if Path(base).is_dir():
            for p in Path(base).glob("tensorrt-*-info"):
                m = re.match(r"tensorrt-([0-9][0-9.]*[0-9])", p.name)
                if m:
                    return m.group(1)
    return None
