"""Latency measurement: warm-up, then timed iterations over real inputs cycled from memory.

Raw samples are kept; no outliers are clipped (MEASUREMENT.md: clipping hides the tail).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class TimingProfile:
    name: str
    warmup_iters: int
    warmup_s: float
    iters: int
    min_time_s: float


PROFILES = {
    "quick": TimingProfile("quick", warmup_iters=10, warmup_s=1.0, iters=50, min_time_s=5.0),
    "ci": TimingProfile("ci", warmup_iters=50, warmup_s=5.0, iters=300, min_time_s=10.0),
    "release": TimingProfile("release", warmup_iters=50, warmup_s=5.0, iters=1000, min_time_s=30.0),
}


def summarize(samples_ms: Sequence[float]) -> dict:
    arr = np.asarray(samples_ms, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {
        "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "p99": float(np.percentile(arr, 99)),
        "mean": mean, "std": std, "cv": std / mean if mean else float("nan"),
        "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size),
    }


def measure(fn: Callable[[object], object], inputs: Sequence[object], profile: TimingProfile) -> dict:
    """Call `fn` on `inputs` in turn: warm up, then time at least `iters` calls and `min_time_s`."""
    i = 0
    t0 = time.perf_counter()
    warm = 0
    while warm < profile.warmup_iters or time.perf_counter() - t0 < profile.warmup_s:
        fn(inputs[i % len(inputs)])
        i += 1
        warm += 1
    samples: list[float] = []
    t_start = time.perf_counter()
    while len(samples) < profile.iters or time.perf_counter() - t_start < profile.min_time_s:
        x = inputs[i % len(inputs)]
        i += 1
        t = time.perf_counter()
        fn(x)
        samples.append((time.perf_counter() - t) * 1000)
    stats = summarize(samples)
    stats["warmup_iters"] = warm
    return {"stats": stats, "samples_ms": samples}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
