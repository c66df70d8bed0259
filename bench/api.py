"""Python API of the harness, mirroring `python -m bench.run` and `python -m bench.compare`.

    from bench import api

    records = api.run(api.BenchConfig(models=["ddrnet"], backends=["torch", "onnxruntime"],
                                      weights="random", input_hw=[(360, 480)], profile="ci"))
    records = api.run(models=["ddrnet"], backends=["onnxruntime"])   # keyword form
    df = api.load_results("results/")     # pandas DataFrame, one row per record
    rows = api.compare("baselines/x/", "results/")  # bench.compare's gate, as data

`run` returns one record (dict) per planned cell, including the cells a rerun reuses from
--out (those carry `_reused: True`; keys starting with "_" are never written to disk).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from bench.results import KEY_FIELDS, SCHEMA, cell_key, read_records  # noqa: F401  (re-exported)


def __getattr__(name: str) -> Any:
    # BenchConfig lives in bench.runner, which imports torch; load it only when asked for.
    if name == "BenchConfig":
        from bench.runner import BenchConfig

        return BenchConfig
    raise AttributeError(f"module 'bench.api' has no attribute {name!r}")


def run(config: Any = None, *, log: Callable[[str], None] | None = None, **fields: Any) -> list[dict]:
    """Run a sweep. `config` is a BenchConfig, a dict of its fields, or None with the fields
    as keyword arguments. Raises zoo.errors.UsageError (and the zoo's data/checkpoint errors)
    for bad input, like the CLI's exit code 2."""
    from bench.runner import BenchConfig, run_sweep

    if config is None:
        config = BenchConfig(**fields)
    elif isinstance(config, dict):
        config = BenchConfig(**{**config, **fields})
    elif fields:
        config = dataclasses.replace(config, **fields)
    return run_sweep(config, log) if log is not None else run_sweep(config)


_LIST_COLUMNS = ("samples_ms", "e2e_samples_ms", "latency_ms.trial_medians", "e2e_latency_ms.trial_medians")


def load_results(source: str | Path, *, samples: bool = False, env: bool = True):
    """Records under `source` (a results folder or a JSON file) as a pandas DataFrame.

    One row per record. Nested fields become dotted columns: `metrics.miou`,
    `metrics.per_class_iou.Road`, `latency_ms.median`, `e2e_latency_ms.p99`, `env.cpu.model`...
    Raw samples (`samples_ms`, `e2e_samples_ms`) and per-trial medians stay out unless
    `samples=True` (then as list-valued columns); `env=False` drops the environment columns.
    `input_hw` becomes `input_h` and `input_w`; `cell_key` is always present.
    """
    import pandas as pd

    recs = []
    for rec in read_records(source):
        rec = dict(rec)
        rec.setdefault("cell_key", cell_key(rec))
        hw = rec.pop("input_hw", None) or (None, None)
        rec["input_h"], rec["input_w"] = hw[0], hw[1]
        rec.pop("traceback", None)
        if not env:
            rec.pop("env", None)
        if not samples:
            rec.pop("samples_ms", None)
            rec.pop("e2e_samples_ms", None)
        recs.append(rec)
    if not recs:
        return pd.DataFrame()
    df = pd.json_normalize(recs, sep=".")
    if not samples:
        df = df.drop(columns=[c for c in _LIST_COLUMNS if c in df.columns])
    first = [c for c in ("model", "variant", "backend", "precision", "input_h", "input_w", "batch", "status")
             if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def compare(baseline: str | Path, candidate: str | Path, **gate: Any):
    """bench.compare's gate as data: a list of bench.compare.Row (verdict, reasons, ratio, ci)."""
    from bench.compare import GateConfig, compare_records

    return compare_records(read_records(baseline), read_records(candidate), GateConfig(**gate))
