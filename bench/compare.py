"""Regression gate: compare a candidate result set with a baseline, cell by cell.

    python -m bench.compare BASELINE CANDIDATE [--tolerance miou=0.005 ...]

BASELINE and CANDIDATE are each a results folder (every *.json record in it) or one JSON file
(a record or a list of records). Cells are matched by their cell key (bench.results.KEY_FIELDS;
`--ignore-key FIELD` drops a field from the match, e.g. threads). For each key the newest record
with status ok is used.

A matched cell fails when

* accuracy: a metric drops by more than its tolerance (one-sided; default miou=0.005, i.e. 0.5
  mIoU points; add e.g. --tolerance pixel_agreement=0.01);
* latency: the ratio of medians candidate/baseline exceeds 1 + max(--min-slowdown (5%),
  --cv-factor (3) x the baseline's CV) AND the bootstrap confidence interval of that ratio
  (--confidence 0.95, --bootstrap 2000 resamples of the raw samples, --seed 0) lies entirely
  above 1. Both conditions: the first ignores changes too small to matter, the second changes
  that noise explains. Records without raw samples are judged on the ratio alone.
* status: the baseline cell is ok but the candidate's failed or was skipped.

A baseline cell missing from the candidate fails too (a silently dropped cell would otherwise
pass), unless --allow-missing; candidate cells without a baseline are listed as "new".

Prints a GitHub-flavoured table and exits 1 on any failure, 0 otherwise, 2 on bad input.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from bench.results import KEY_FIELDS, latest_by_key, read_records, short_id

DEFAULT_TOLERANCES = {"miou": 0.005}


@dataclass
class GateConfig:
    tolerances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    min_slowdown: float = 0.05
    cv_factor: float = 3.0
    confidence: float = 0.95
    bootstrap: int = 2000
    seed: int = 0
    latency_field: str = "latency_ms"
    ignore_key: tuple[str, ...] = ()
    allow_missing: bool = False


@dataclass
class Row:
    cell: str
    verdict: str                      # ok | FAIL | new | missing | n/a
    reasons: list[str] = field(default_factory=list)
    base: dict | None = None
    cand: dict | None = None
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    limit: float | None = None


def ratio_ci(base: Sequence[float], cand: Sequence[float], *, n_boot: int = 2000, confidence: float = 0.95,
             seed: int = 0, chunk: int = 250) -> tuple[float, float]:
    """Percentile bootstrap CI of median(cand) / median(base), resampling each set independently."""
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if b.size == 0 or c.size == 0:
        raise ValueError("bootstrap needs samples on both sides")
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    for start in range(0, n_boot, chunk):  # chunks bound the memory for long sample lists
        k = min(chunk, n_boot - start)
        mb = np.median(b[rng.integers(0, b.size, size=(k, b.size))], axis=1)
        mc = np.median(c[rng.integers(0, c.size, size=(k, c.size))], axis=1)
        ratios[start:start + k] = mc / mb
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _samples(rec: dict, latency_field: str) -> list[float]:
    name = "samples_ms" if latency_field == "latency_ms" else latency_field.replace("latency_ms", "samples_ms")
    return list(rec.get(name) or [])


def _select(records: list[dict], ignore: Sequence[str]) -> dict[str, dict]:
    newest_any = latest_by_key(records, status=None, ignore=ignore)
    newest_ok = latest_by_key(records, status="ok", ignore=ignore)
    return {**newest_any, **newest_ok}


def compare_records(baseline: list[dict], candidate: list[dict], cfg: GateConfig | None = None) -> list[Row]:
    cfg = cfg or GateConfig()
    base = _select(baseline, cfg.ignore_key)
    cand = _select(candidate, cfg.ignore_key)
    rows: list[Row] = []
    for key, b in base.items():
        c = cand.get(key)
        row = Row(cell=short_id(b), verdict="ok", base=b, cand=c)
        rows.append(row)
        if b.get("status") != "ok":
            row.verdict = "n/a"
            row.reasons.append(f"baseline {b.get('status')}")
            continue
        if c is None:
            row.verdict = "missing" if cfg.allow_missing else "FAIL"
            row.reasons.append("missing from the candidate")
            continue
        if c.get("status") != "ok":
            row.verdict = "FAIL"
            row.reasons.append(f"candidate {c.get('status')}: {c.get('error')}")
            continue
        _gate_accuracy(row, b, c, cfg)
        _gate_latency(row, b, c, cfg)
    for key, c in cand.items():
        if key not in base:
            rows.append(Row(cell=short_id(c), verdict="new", cand=c, reasons=["no baseline"]))
    return rows


def _gate_accuracy(row: Row, b: dict, c: dict, cfg: GateConfig) -> None:
    bm, cm = b.get("metrics") or {}, c.get("metrics") or {}
    for metric, tol in cfg.tolerances.items():
        bv, cv = bm.get(metric), cm.get(metric)
        if not isinstance(bv, (int, float)) or (isinstance(bv, float) and math.isnan(bv)):
            continue
        if not isinstance(cv, (int, float)) or (isinstance(cv, float) and math.isnan(cv)):
            row.verdict = "FAIL"
            row.reasons.append(f"{metric} missing in the candidate")
            continue
        drop = bv - cv
        if drop > tol:
            row.verdict = "FAIL"
            row.reasons.append(f"{metric} dropped {drop:.4f} > {tol:g}")


def _gate_latency(row: Row, b: dict, c: dict, cfg: GateConfig) -> None:
    bl, cl = b.get(cfg.latency_field) or {}, c.get(cfg.latency_field) or {}
    if not bl.get("median") or not cl.get("median"):
        return
    row.ratio = cl["median"] / bl["median"]
    base_cv = bl.get("cv") if isinstance(bl.get("cv"), (int, float)) and math.isfinite(bl.get("cv")) else 0.0
    row.limit = 1.0 + max(cfg.min_slowdown, cfg.cv_factor * base_cv)
    bs, cs = _samples(b, cfg.latency_field), _samples(c, cfg.latency_field)
    if bs and cs:
        row.ci = ratio_ci(bs, cs, n_boot=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed)
    significant = row.ci[0] > 1.0 if row.ci else True
    if row.ratio > row.limit and significant:
        row.verdict = "FAIL"
        ci = f", {cfg.confidence:.0%} CI {row.ci[0]:.3f}-{row.ci[1]:.3f}" if row.ci else ", no raw samples"
        row.reasons.append(f"{cfg.latency_field} median x{row.ratio:.3f} > x{row.limit:.3f}{ci}")


def table(rows: list[Row], cfg: GateConfig | None = None) -> str:
    from tabulate import tabulate

    cfg = cfg or GateConfig()

    def metric(rec: dict | None, name: str) -> float | None:
        v = (rec or {}).get("metrics", {}).get(name) if rec else None
        return v if isinstance(v, (int, float)) else None

    def med(rec: dict | None) -> float | None:
        return ((rec or {}).get(cfg.latency_field) or {}).get("median") if rec else None

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    out = []
    for r in rows:
        bm, cm = metric(r.base, "miou"), metric(r.cand, "miou")
        out.append([
            r.cell, r.verdict,
            fmt(100 * bm if bm is not None else None, ".2f"), fmt(100 * cm if cm is not None else None, ".2f"),
            fmt(100 * (cm - bm) if bm is not None and cm is not None else None, "+.2f"),
            fmt(med(r.base), ".2f"), fmt(med(r.cand), ".2f"), fmt(r.ratio, ".3f"),
            f"{r.ci[0]:.3f}-{r.ci[1]:.3f}" if r.ci else "-", fmt(r.limit, ".3f"),
            "; ".join(r.reasons),
        ])
    headers = ["cell", "verdict", "base mIoU %", "cand mIoU %", "Δ pts", "base median ms", "cand median ms",
               "ratio", f"{cfg.confidence:.0%} CI", "limit", "why"]
    return tabulate(out, headers=headers, tablefmt="github")


def parse_tolerances(items: Sequence[str]) -> dict[str, float]:
    tol = dict(DEFAULT_TOLERANCES)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            tol[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"error: --tolerance expects METRIC=VALUE (e.g. miou=0.005), got {item!r}") from None
    return tol


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", help="results folder or JSON file")
    p.add_argument("candidate", help="results folder or JSON file")
    p.add_argument("--tolerance", action="append", default=[], metavar="METRIC=DROP",
                   help="largest allowed drop of a metric (repeatable; default miou=0.005)")
    p.add_argument("--min-slowdown", type=float, default=0.05, help="latency ratio floor of the gate (default 0.05)")
    p.add_argument("--cv-factor", type=float, default=3.0, help="x baseline CV as the latency limit (default 3)")
    p.add_argument("--confidence", type=float, default=0.95, help="bootstrap CI level (default 0.95)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", default="latency_ms", choices=("latency_ms", "e2e_latency_ms"),
                   help="which latency to gate (default latency_ms: model only)")
    p.add_argument("--ignore-key", action="append", default=[], choices=KEY_FIELDS,
                   help="drop a field from the cell match (repeatable)")
    p.add_argument("--allow-missing", action="store_true", help="baseline cells absent from the candidate do not fail")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = GateConfig(tolerances=parse_tolerances(args.tolerance), min_slowdown=args.min_slowdown,
                     cv_factor=args.cv_factor, confidence=args.confidence, bootstrap=args.bootstrap,
                     seed=args.seed, latency_field=args.latency, ignore_key=tuple(args.ignore_key),
                     allow_missing=args.allow_missing)
    try:
        baseline, candidate = read_records(args.baseline), read_records(args.candidate)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not baseline:
        print(f"error: no result records in {args.baseline}", file=sys.stderr)
        return 2
    if not candidate:
        print(f"error: no result records in {args.candidate}", file=sys.stderr)
        return 2
    rows = compare_records(baseline, candidate, cfg)
    print(table(rows, cfg))
    failed = [r for r in rows if r.verdict == "FAIL"]
    matched = sum(1 for r in rows if r.base is not None and r.cand is not None)
    print()
    print(f"{matched} matched cells, {len(failed)} failed, {sum(r.verdict == 'new' for r in rows)} new; "
          f"tolerances {cfg.tolerances}, latency limit max({cfg.min_slowdown:g}, {cfg.cv_factor:g} x CV) "
          f"with a {cfg.confidence:.0%} bootstrap CI above 1")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
