"""Result records: one JSON file per cell, versioned, written atomically, never overwritten."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from zoo.io import write_json

SCHEMA = 1
REQUIRED = ("schema", "model", "variant", "backend", "dataset", "split", "status", "error")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def record_path(out_dir: str | Path, rec: dict[str, Any]) -> Path:
    h, w = rec.get("input_hw") or (0, 0)
    stamp = rec["timestamp"].replace(":", "").replace("-", "").replace("+0000", "Z")
    name = f"{rec['model']}__{rec['variant']}__{rec['backend']}__{rec['dataset']}-{rec['split']}__{h}x{w}__b{rec.get('batch', 1)}__{stamp}.json"
    return Path(out_dir) / name


def write_record(out_dir: str | Path, rec: dict[str, Any]) -> Path:
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"result record lacks {missing}")
    path = record_path(out_dir, rec)
    n = 1
    while path.exists():  # append-only: never replace an earlier record
        path = path.with_name(path.stem + f"_{n}.json")
        n += 1
    write_json(path, rec)
    return path


def read_records(out_dir: str | Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"result file {path} is not valid JSON ({exc}); delete or fix it") from None
        if isinstance(rec, dict) and "schema" in rec:
            rec["_path"] = str(path)
            records.append(rec)
    return records
