"""The on-disk cache of evaluation sets (segmentation, detection, instance) under
``<artifacts>/evalsets/``, shared by their preparers (`bench.runner.prepare_evalset`,
`prepare_det_evalset`, `bench.instances.prepare_instance_evalset`).

An evaluation set is found again by a *fingerprint* of what it was made from (dataset, split,
input size, and every source file's path, size and mtime), which is cheap to compute; its
``sha256`` hashes the files' *contents* (the data-subset hash in the records), computed only when
the set is built.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from zoo.checkpoints import artifacts_dir


def file_listing(paths: Iterable[Path]) -> list[list[Any]]:
    """[path, size, mtime_ns] of each file: what a fingerprint sees of it."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def contents_sha256(paths: Iterable[Path]) -> str:
    """sha256 over the sha256 of each file's bytes, in order."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class EvalsetSlot:
    """Where an evaluation set with this fingerprint lives, and its metadata if already built."""

    fingerprint: str
    folder: Path
    meta: dict | None

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"


def evalset_slot(artifacts: str | None, data: str, split: str, key: list[Any], suffix: str,
                 required: str = "labels") -> EvalsetSlot:
    """The cache slot of the evaluation set identified by `key` (JSON-able: dataset, split, size,
    file listing...): ``<artifacts>/evalsets/<data>-<split>/<fingerprint[:16]><suffix>``. Its
    ``meta`` is the stored meta.json when that exists and the file it names under `required` is
    still there, else None (build it)."""
    fp = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    folder = artifacts_dir(artifacts) / "evalsets" / f"{data}-{split.replace('+', '_')}" / f"{fp[:16]}{suffix}"
    slot = EvalsetSlot(fp, folder, None)
    if slot.meta_path.is_file():
        meta = json.loads(slot.meta_path.read_text())
        if meta.get(required) and Path(meta[required]).is_file():
            slot.meta = meta
    return slot
