"""Comparison reports from benchmark records: `python -m reports.build` (see reports/build.py).

Torch-free: reports read JSON records only and never import a backend.
"""
from reports.tables import ReportError

__all__ = ["ReportError", "build_reports"]


def __getattr__(name):
    if name == "build_reports":
        from reports.build import build_reports

        return build_reports
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
