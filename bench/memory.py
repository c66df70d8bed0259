"""Peak resident memory of the cell process, from the kernel's high-water mark.

On Linux, writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS, so the peak
measured afterwards belongs to the work that follows (model load + inference), not to imports.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    return kb / 1024


def reset_peak() -> bool:
    """Reset the high-water mark; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class PeakMemory:
    """Baseline after imports, then the peak of everything until `stop()`."""

    def __init__(self) -> None:
        self.reset_ok = reset_peak()
        self.baseline_mb = current_rss_mb()

    def stop(self) -> dict:
        peak = peak_rss_mb()
        return {"peak_rss_mb": peak, "baseline_rss_mb": self.baseline_mb,
                "rss_delta_mb": peak - self.baseline_mb, "peak_reset": self.reset_ok}
