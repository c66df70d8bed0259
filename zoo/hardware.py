"""What the machine's processor can do, for choices that depend on it (INT8 kernels, bf16 training),
and the memory allocator training runs with."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported here: `reexec_with_tcmalloc` runs before it loads
    import torch

# x86: AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX-BF16 (Sapphire Rapids); ARM: the BF16
# extension (Neoverse V1/V2, Graviton 3). Without one of them PyTorch emulates bfloat16 matmuls
# and convolutions, which makes bf16 autocast slower than float32.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (Linux; x86 'flags' or ARM 'Features'); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def native_bf16(device: "torch.device", *, flags: set[str] | None = None) -> bool:
    """Whether `device` computes bfloat16 convolutions in hardware (so bf16 autocast pays off)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool((cpu_flags() if flags is None else flags) & CPU_BF16_FLAGS)


def resolve_amp(choice: str, device: "torch.device", *, flags: set[str] | None = None) -> str:
    """The autocast precision a training run uses: `choice` ("none", "bf16"), or for "auto" bf16
    where the device has native bf16 arithmetic and none elsewhere."""
    if choice not in ("none", "bf16", "auto"):
        raise ValueError(f"unknown --amp {choice!r}; valid: none, bf16, auto")
    if choice == "auto":
        return "bf16" if native_bf16(device, flags=flags) else "none"
    return choice


# Training allocates and frees activations of tens of MB every step. glibc's malloc serves blocks
# above its mmap threshold (at most 32 MB) with fresh mmaps, so every step page-faults them in
# again: ~120k minor faults/s and 15 % of the CPU in the kernel while PIDNet-S trained. TCMalloc
# keeps the pages: a PIDNet-S step (batch 8 at 288x384, 2 threads) took 0.58 s instead of 0.79 s in
# bf16 and 0.84 instead of 1.09-1.33 s in float32 (2-core EPYC; jemalloc's defaults gained
# nothing). Numerics do not change; only where the bytes live.
TCMALLOC_FILES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib")
ALLOCATOR_ENV = "EDGEZOO_ALLOCATOR"   # "auto" (default): TCMalloc when installed; "system": glibc's


def find_tcmalloc(dirs: tuple[str, ...] | None = None) -> str | None:
    """The path of an installed TCMalloc library (Debian/Ubuntu: libtcmalloc-minimal4), or None."""
    for d in (dirs if dirs is not None else (*_LIB_DIRS, os.path.join(sys.prefix, "lib"))):
        for name in TCMALLOC_FILES:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
    return None


def allocator_in_use() -> str:
    """"tcmalloc", "jemalloc" or "system": which allocator this process has mapped (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    return "tcmalloc" if "libtcmalloc" in maps else "jemalloc" if "libjemalloc" in maps else "system"


def reexec_with_tcmalloc() -> None:
    """Restart this command (same PID, arguments and environment) with TCMalloc preloaded, when
    it is installed and not yet in use; a no-op otherwise or with EDGEZOO_ALLOCATOR=system.
    Training commands call it before their imports (``if __name__ == "__main__"`` at the top of
    the module), so that torch is imported once, under the allocator that serves it."""
    choice = os.environ.get(ALLOCATOR_ENV, "auto")
    if choice not in ("auto", "system"):
        raise SystemExit(f"error: {ALLOCATOR_ENV}={choice!r} is not valid; use auto (TCMalloc when installed) "
                         "or system")
    if choice == "system" or allocator_in_use() != "system" or os.environ.get("EDGEZOO_ALLOCATOR_TRIED"):
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    preload = " ".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
    # EDGEZOO_ALLOCATOR_TRIED: never loop, even if the preload is refused by the loader.
    env = {**os.environ, "LD_PRELOAD": preload, "EDGEZOO_ALLOCATOR_TRIED": "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def environment_without_tcmalloc() -> dict[str, str]:
    """This process's environment minus what `reexec_with_tcmalloc` added: for child processes
    that must run under the system allocator (benchmarks measure what a user's process uses)."""
    env = dict(os.environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split() if os.path.basename(p) not in TCMALLOC_FILES]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    env.pop("EDGEZOO_ALLOCATOR_TRIED", None)
    return env
