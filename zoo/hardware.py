"""What the machine's processor can do, for choices that depend on it (INT8 kernels, bf16 training)."""
from __future__ import annotations

from pathlib import Path

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


def native_bf16(device: torch.device, *, flags: set[str] | None = None) -> bool:
    """Whether `device` computes bfloat16 convolutions in hardware (so bf16 autocast pays off)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool((cpu_flags() if flags is None else flags) & CPU_BF16_FLAGS)


def resolve_amp(choice: str, device: torch.device, *, flags: set[str] | None = None) -> str:
    """The autocast precision a training run uses: `choice` ("none", "bf16"), or for "auto" bf16
    where the device has native bf16 arithmetic and none elsewhere."""
    if choice not in ("none", "bf16", "auto"):
        raise ValueError(f"unknown --amp {choice!r}; valid: none, bf16, auto")
    if choice == "auto":
        return "bf16" if native_bf16(device, flags=flags) else "none"
    return choice
