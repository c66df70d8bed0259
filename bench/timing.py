"""Latency measurement: warm-up, then timed iterations over real inputs cycled from memory.

Raw samples are kept; no outliers are clipped (MEASUREMENT.md: clipping hides the tail).
Each timed call is one synchronous `fn(x)` between two `perf_counter_ns` readings; backends
that run on a GPU return host arrays, so the copy back (and thus the synchronisation) is inside
the measured call.

Profiles (warm-up, then timed; "at least A iterations and B seconds" means both must be met):

    quick    warm-up max(10 it, 1 s),  timed max(50 it, 5 s)      (CLI default, for development)
    ci       warm-up max(50 it, 5 s),  timed max(300 it, 10 s)
    release  warm-up max(50 it, 5 s),  timed max(1000 it, 30 s)   (numbers for reports)

`trials` repeats the timed loop in the same process after one warm-up; the statistics pool
every sample and `trial_medians` keeps each loop's median (their spread shows drift, e.g.
thermal throttling, that pooled percentiles hide).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_CV_THRESHOLD = 0.10


@dataclass(frozen=True)
class TimingProfile:
    name: str
    warmup_iters: int
    warmup_s: float
    iters: int
    min_time_s: float
    trials: int = 1


PROFILES = {
    "quick": TimingProfile("quick", warmup_iters=10, warmup_s=1.0, iters=50, min_time_s=5.0),
    "ci": TimingProfile("ci", warmup_iters=50, warmup_s=5.0, iters=300, min_time_s=10.0),
    "release": TimingProfile("release", warmup_iters=50, warmup_s=5.0, iters=1000, min_time_s=30.0),
}


def resolve_profile(name: str, *, iters: int | None = None, min_time: float | None = None,
                    warmup: int | None = None, trials: int | None = None) -> TimingProfile:
    """A named profile with CLI overrides. Overriding iterations or warm-up also drops the
    profile's time floors (unless --min-time is given), so short smoke runs stay short."""
    if name not in PROFILES:
        raise KeyError(f"unknown timing profile {name!r}; valid: {', '.join(PROFILES)}")
    p = PROFILES[name]
    changes: dict = {}
    if iters is not None or warmup is not None or min_time is not None:
        changes.update(warmup_s=0.0, min_time_s=0.0)
        if iters is not None:
            changes["iters"] = int(iters)
        if warmup is not None:
            changes["warmup_iters"] = int(warmup)
        if min_time is not None:
            changes["min_time_s"] = float(min_time)
    if trials is not None:
        changes["trials"] = int(trials)
    if not changes:
        return p
    return dataclasses.replace(p, **changes)


def profile_id(p: TimingProfile) -> str:
    """The profile as part of a cell key: its name, plus every value that differs from it."""
    base = PROFILES.get(p.name)
    if base is None:
        return p.name
    diffs = [f"{f.name}={getattr(p, f.name)}" for f in dataclasses.fields(p)
             if f.name != "name" and getattr(p, f.name) != getattr(base, f.name)]
    return p.name + (f"[{','.join(diffs)}]" if diffs else "")


def summarize(samples_ms: Sequence[float]) -> dict:
    """median, p90, p99, mean, std (n-1), cv = std/mean, min, max, n; NaN-free for n >= 1."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {
        "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)), "mean": mean, "std": std,
        "cv": std / mean if mean else float("nan"),
        "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size),
    }


def is_unstable(stats: dict, threshold: float = DEFAULT_CV_THRESHOLD) -> bool:
    cv = stats.get("cv")
    return bool(cv is not None and np.isfinite(cv) and cv > threshold)


def measure(fn: Callable[[object], object], inputs: Sequence[object], profile: TimingProfile,
            clock: Callable[[], int] = time.perf_counter_ns) -> dict:
    """Call `fn` on `inputs` in turn: warm up, then `profile.trials` timed loops of at least
    `iters` calls and `min_time_s` each. Returns {"stats", "samples_ms", "trial_medians"}."""
    n_inputs = len(inputs)
    i = 0
    warm = 0
    t0 = clock()
    warmup_ns = profile.warmup_s * 1e9
    while warm < profile.warmup_iters or clock() - t0 < warmup_ns:
        fn(inputs[i % n_inputs])
        i += 1
        warm += 1
    warm_s = (clock() - t0) / 1e9
    samples_ns: list[int] = []
    trial_medians = []
    min_ns = profile.min_time_s * 1e9
    timed_start = clock()
    for _ in range(max(1, profile.trials)):
        trial: list[int] = []
        t_start = clock()
        while len(trial) < profile.iters or clock() - t_start < min_ns:
            x = inputs[i % n_inputs]
            i += 1
            t = clock()
            fn(x)
            trial.append(clock() - t)
        trial_medians.append(float(np.median(trial)) / 1e6)
        samples_ns.extend(trial)
    samples_ms = [s / 1e6 for s in samples_ns]
    stats = summarize(samples_ms)
    stats.update(warmup_iters=warm, warmup_s=warm_s, timed_s=(clock() - timed_start) / 1e9,
                 trials=max(1, profile.trials), trial_medians=trial_medians)
    return {"stats": stats, "samples_ms": samples_ms, "trial_medians": trial_medians}
