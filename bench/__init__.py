"""Benchmark harness: one isolated process per (model, variant, backend, input size, batch) cell.

Python API (the CLI `python -m bench.run` is the same code)::

    from bench import api
    records = api.run(api.BenchConfig(models=["ddrnet"], backends=["onnxruntime"], weights="random"))
    df = api.load_results("results/")          # one row per record, flattened columns

`bench.load_results` and `bench.BenchConfig` are shortcuts for the same functions. (The name
`bench.run` is the CLI module, so the sweep function lives at `bench.api.run`.)

Nothing heavy is imported here: the cell process (`python -m bench.cell`) imports this package
and must stay free of torch and pandas.
"""
from __future__ import annotations

from typing import Any

__all__ = ["BenchConfig", "load_results"]


def __getattr__(name: str) -> Any:  # PEP 562: resolve the shortcuts on first use
    if name in ("BenchConfig", "load_results"):
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
