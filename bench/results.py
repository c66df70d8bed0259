"""Result records: one JSON file per cell, versioned, written atomically, never overwritten.

Standard library only (the cell process and `bench.compare` import it without torch).

Schema history:
    1  first harness (model-only latency, accuracy, peak RSS)
    2  issue #4: cell key, e2e latency, trials, unstable flag, pixel agreement and mIoU delta vs
       the PyTorch FP32 reference, precision/device, GPU memory, imports_torch, data hash
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any, Iterable

from zoo.io import is_temporary, remove_stale_temporaries, write_json

SCHEMA = 2
REQUIRED = ("schema", "model", "variant", "backend", "dataset", "split", "status", "error")
STATUSES = ("ok", "skipped", "failed")

# What makes two measurements "the same cell": a rerun with an equal key is skipped (unless
# --force) and bench.compare matches baseline and candidate on it.
KEY_FIELDS = ("model", "variant", "backend", "precision", "device", "dataset", "split", "input_hw", "batch",
              "threads", "weights_sha256", "profile_id", "images_subset", "quant_config", "postprocess_id")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def cell_key(rec: dict[str, Any], ignore: Iterable[str] = ()) -> str:
    """A readable, stable string from the key fields of a record (or of a planned cell)."""
    parts = []
    for f in KEY_FIELDS:
        if f in ignore:
            continue
        v = rec.get(f)
        if f == "input_hw" and v:
            v = f"{v[0]}x{v[1]}"
        parts.append(f"{f}={v if v not in (None, '') else '-'}")
    return "|".join(parts)


def short_id(rec: dict[str, Any]) -> str:
    """model/variant/backend/HxW/bN: what a person reads in logs (and fault patterns match)."""
    h, w = rec.get("input_hw") or (0, 0)
    device = str(rec.get("device") or "")
    where = f"@{device}" if device.startswith("dla") else ""
    return f"{rec['model']}/{rec['variant']}/{rec['backend']}{where}/{h}x{w}/b{rec.get('batch', 1)}"


def record_path(out_dir: str | Path, rec: dict[str, Any]) -> Path:
    h, w = rec.get("input_hw") or (0, 0)
    stamp = re.sub(r"[^0-9TZ]", "", rec["timestamp"].replace("+00:00", "Z"))
    name = (f"{rec['model']}__{rec['variant']}__{rec['backend']}__{rec['dataset']}-{rec['split']}"
            f"__{h}x{w}__b{rec.get('batch', 1)}__{stamp}.json")
    return Path(out_dir) / name


def validate(rec: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"result record lacks {missing}")
    if rec["status"] not in STATUSES:
        raise ValueError(f"result status {rec['status']!r} is not one of {STATUSES}")


def write_record(out_dir: str | Path, rec: dict[str, Any], *, _fault_half: bool = False) -> Path:
    """Write `rec` under a new name in `out_dir` (append-only: an existing file is never replaced)."""
    validate(rec)
    path = record_path(out_dir, rec)
    n = 1
    while path.exists():
        path = path.with_name(record_path(out_dir, rec).stem + f"_{n}.json")
        n += 1
    write_json(path, {k: v for k, v in rec.items() if not k.startswith("_")}, _fault_half=_fault_half)
    return path


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"result file {path} is not valid JSON ({exc}); delete or fix it") from None


def read_records(source: str | Path) -> list[dict[str, Any]]:
    """Records from a results folder (every *.json in it), or from one JSON file holding a
    record or a list of records. Each gets `_path`; temporary files of writers are ignored."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.glob("*.json") if not is_temporary(p))
    elif source.is_file():
        paths = [source]
    else:
        raise FileNotFoundError(f"no results at {source}: expected a folder of records or a JSON file")
    records = []
    for path in paths:
        data = _load(path)
        for rec in data if isinstance(data, list) else [data]:
            if isinstance(rec, dict) and "schema" in rec:
                rec["_path"] = str(path)
                records.append(upgrade(rec))
    return records


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """Fill the fields a schema-1 record lacks so that readers can treat every record alike."""
    if rec.get("schema", 1) >= 2:
        return rec
    rec = dict(rec)
    rec.setdefault("batch", 1)
    rec.setdefault("precision", "fp32" if rec.get("variant") == "fp32" else None)
    rec.setdefault("device", "cpu")
    rec.setdefault("weights_sha256", (rec.get("weights") or {}).get("sha256") or "")
    rec.setdefault("profile_id", rec.get("profile"))
    rec.setdefault("images_subset", "all")
    rec.setdefault("e2e_latency_ms", {})
    rec.setdefault("unstable", None)
    rec["cell_key"] = cell_key(rec)
    return rec


def latest_by_key(records: Iterable[dict[str, Any]], *, status: str | None = "ok",
                  ignore: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The newest record per cell key (optionally only those with `status`)."""
    ignore = tuple(ignore)
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if status is not None and rec.get("status") != status:
            continue
        key = cell_key(rec, ignore)
        if key not in out or str(rec.get("timestamp", "")) >= str(out[key].get("timestamp", "")):
            out[key] = rec
    return out


def stale_temporaries(out_dir: str | Path) -> list[Path]:
    return remove_stale_temporaries(out_dir)
