"""Checkpoint cache, metadata and safe loading (never unpickles code: `weights_only=True`).

Layout of the artifact cache (default `./artifacts`, or `$EDGEZOO_ARTIFACTS`, or `--artifacts`):

    artifacts/checkpoints/<model>/<dataset>/<recipe>/{best,last}.pt   + best.json (metadata, sha256)

A checkpoint file is a dict `{"model": state_dict, "meta": {...}, ...training state}`; a plain
state dict (as official releases ship) loads too.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from zoo.io import atomic_path, read_json_dict, sha256_file, write_json
from zoo.registry import ModelEntry, OfficialWeights

ARTIFACTS_ENV = "EDGEZOO_ARTIFACTS"
TRAINED_ENV = "EDGEZOO_TRAINED"


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt or does not fit the network."""


def artifacts_dir(override: str | Path | None = None) -> Path:
    return Path(override or os.environ.get(ARTIFACTS_ENV) or "artifacts")


def trained_dir() -> Path | None:
    """The repository's kept weights (`trained/<model>/<dataset>/<recipe>/best.pt`, committed; see
    `zoo.campaign`): `$EDGEZOO_TRAINED` when set (empty: none), else `trained/` of the checkout
    this package runs from (absent from an installed wheel)."""
    env = os.environ.get(TRAINED_ENV)
    if env is not None:
        return Path(env) if env else None
    path = Path(__file__).resolve().parents[1] / "trained"
    return path if path.is_dir() else None


def checkpoint_dir(model: str, dataset: str, recipe: str, artifacts: str | Path | None = None) -> Path:
    return artifacts_dir(artifacts) / "checkpoints" / model / dataset / recipe


# Kept weights live in git, and git hosts refuse large files (GitHub: 100 MB per file): a kept
# file above this size is stored as `<name>.part000`, `<name>.part001`, ... and joined on use.
KEPT_PART_BYTES = 90 * 2**20


def kept_parts(path: str | Path) -> list[Path]:
    """The parts of kept weights stored in pieces (`best.pt.part000`, ...), in order; [] for none."""
    path = Path(path)
    parts = []
    while (part := path.with_name(f"{path.name}.part{len(parts):03d}")).is_file():
        parts.append(part)
    return parts


def weights_exist(path: str | Path) -> bool:
    """Whether `path` is a file or kept weights stored in parts."""
    return Path(path).is_file() or bool(kept_parts(path))


def remove_kept(path: str | Path) -> None:
    """Remove kept weights, whole or in parts."""
    path = Path(path)
    for part in kept_parts(path):
        part.unlink()
    path.unlink(missing_ok=True)


def write_kept(src: str | Path, dst: str | Path, *, part_bytes: int | None = None) -> list[Path]:
    """Copy the file `src` to `dst` for keeping in git: whole when at most `part_bytes`, else in
    parts. Each file is written atomically; the stale form (whole file or surplus parts) is removed
    afterwards. Which parts belong together is checked on use, against the sidecar's sha256."""
    src, dst = Path(src), Path(dst)
    part_bytes = part_bytes or KEPT_PART_BYTES
    if src.stat().st_size <= part_bytes:
        with atomic_path(dst) as tmp:
            tmp.write_bytes(src.read_bytes())
        stale = kept_parts(dst)
        for part in stale:
            part.unlink()
        return [dst]
    written = []
    with open(src, "rb") as fh:
        while chunk := fh.read(part_bytes):
            part = dst.with_name(f"{dst.name}.part{len(written):03d}")
            with atomic_path(part) as tmp:
                tmp.write_bytes(chunk)
            written.append(part)
    surplus = kept_parts(dst)[len(written):]
    for part in surplus:
        part.unlink()
    dst.unlink(missing_ok=True)
    return written


def resolve_weights(path: str | Path, artifacts: str | Path | None = None) -> Path:
    """The file to read for `path`: `path` itself, or for kept weights stored in parts, their
    joined copy in the artifact cache (`<artifacts>/joined/<sha256>.pt`), checked against the
    sha256 recorded in the sidecar (`best.json` next to `best.pt`)."""
    path = Path(path)
    parts = [] if path.is_file() else kept_parts(path)
    if not parts:
        return path
    sidecar = path.with_suffix(".json")
    expected = (read_json_dict(sidecar) or {}).get("sha256")
    if not expected:
        raise CheckpointError(f"{path} is stored in {len(parts)} parts but {sidecar} records no sha256 to check "
                              "them against; restore the sidecar from git")
    joined = artifacts_dir(artifacts) / "joined" / f"{expected}{path.suffix}"
    if joined.is_file() and sha256_file(joined) == expected:
        return joined
    with atomic_path(joined) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        if sha256_file(tmp) != expected:
            raise CheckpointError(f"the {len(parts)} parts of {path} do not join into the weights {sidecar} "
                                  "records (sha256 differs): a part is missing or stale; restore them from git")
    return joined


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> str:
    """Atomically write `state` (which must hold "model" and "meta"); returns the file's sha256.

    The metadata and sha256 also go to a JSON sidecar so tools can read them without torch.
    """
    path = Path(path)
    meta = dict(state.get("meta", {}))
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("torch", str(torch.__version__))
    # Plain JSON types only, so the file loads with weights_only=True (no custom classes).
    meta = json.loads(json.dumps(meta, default=str))
    state = {**state, "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    digest = sha256_file(path)
    write_json(path.with_suffix(".json"), {**meta, "file": path.name, "sha256": digest})
    return digest


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; returns {"model": state_dict, "meta": {...}, ...}."""
    path = resolve_weights(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass an existing file with --weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {first[:200]} (corrupt, truncated, or it pickles code; "
            "only tensor state dicts are accepted)"
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return {"model": obj["state_dict"], "meta": {}}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": obj, "meta": {}}
    raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(obj).__name__})")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DistributedDataParallel and DataParallel save keys under "module."
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, strict: bool = True) -> None:
    """Load `state` into `model`; any mismatch raises a CheckpointError naming the keys."""
    state = _strip_prefix(state)
    own = model.state_dict()
    # Old releases predate BatchNorm's `num_batches_tracked` counter; it does not affect inference.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if strict and (missing or unexpected or shapes):

        def few(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {few(shapes)}")
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(parts)
            + " (check --model and the number of classes)"
        )
    model.load_state_dict(state, strict=strict)


def official_weights_for(entry: ModelEntry, path: str | Path) -> OfficialWeights | None:
    name = Path(path).name
    return next((w for w in entry.official_weights if w.filename == name), None)


@dataclass
class LoadedWeights:
    model: nn.Module
    num_classes: int
    meta: dict[str, Any]
    preprocess: dict[str, Any] | None  # overrides the dataset normalisation when set
    sha256: str
    path: Path


def _infer_num_classes(entry: ModelEntry, path: Path, ckpt: dict[str, Any], default: int) -> int:
    meta = ckpt.get("meta", {})
    if "num_classes" in meta:
        return int(meta["num_classes"])
    official = official_weights_for(entry, path)
    if official is not None:
        return official.num_classes
    return default


def load_weights(entry: ModelEntry, path: str | Path, *, num_classes: int, **build_kwargs: Any) -> LoadedWeights:
    """Build `entry` with the class count the checkpoint was trained for and load it strictly."""
    path = Path(path)
    src = resolve_weights(path)  # kept weights stored in parts: their joined copy (`path` stays the name)
    # The recorded sha256 must be that of the bytes loaded: kept weights (trained/) can be
    # replaced (atomically) by a running zoo.campaign while another process reads them.
    for _ in range(3):
        digest = sha256_file(src) if src.is_file() else None
        ckpt = entry.checkpoint_reader(src) if entry.checkpoint_reader else None
        if ckpt is None:
            ckpt = read_checkpoint(src)
        if digest == sha256_file(src):
            break
    else:
        raise CheckpointError(f"checkpoint {path} kept changing while it was read; retry when its writer is done")
    n = _infer_num_classes(entry, path, ckpt, num_classes)
    meta = dict(ckpt.get("meta", {}))
    if meta.get("model") and meta["model"] != entry.name:
        raise CheckpointError(
            f"checkpoint {path} was trained for model {meta['model']!r}, not {entry.name!r}; pass --model {meta['model']}"
        )
    # Builder options the keys cannot show (an activation has no weights) may be recorded by the
    # reader; a caller asking for something else would silently get a different network.
    recorded = meta.get("build_kwargs") or {}
    clash = sorted(k for k in recorded if k in build_kwargs and build_kwargs[k] != recorded[k])
    if clash:
        raise CheckpointError(
            f"checkpoint {path} was trained with " + ", ".join(f"{k}={recorded[k]!r}" for k in clash)
            + ", not " + ", ".join(f"{k}={build_kwargs[k]!r}" for k in clash)
        )
    build_kwargs = {**recorded, **build_kwargs}
    state = _strip_prefix(ckpt["model"])
    if not entry.aux_weights:
        model = entry.build(num_classes=n, **build_kwargs)
    else:
        # Training checkpoints carry the auxiliary heads; the inference network is built without.
        model = entry.build(num_classes=n, aux=False, **build_kwargs)
        aux_keys = set(entry.build(num_classes=n, aux=True, **build_kwargs).state_dict()) - set(model.state_dict())
        state = {k: v for k, v in state.items() if k not in aux_keys}
    load_state(model, state, source=str(path))
    official = official_weights_for(entry, path)
    preprocess = meta.get("preprocess") or (official.preprocess if official else None)
    return LoadedWeights(model=model, num_classes=n, meta=meta, preprocess=preprocess, sha256=digest, path=path)


def portable_copy(src: str | Path, dst: str | Path) -> str:
    """Write `src` without its optimizer state to `dst`; returns the new file's sha256.

    Training state outside the work tree does not survive a machine change, and a full `last.pt`
    (weights plus Adam's two moments) is three times the weights: the portable copy is small enough
    to commit, and `zoo.train --resume` continues from it with fresh optimizer moments.
    """
    state = read_checkpoint(src)
    dropped = [k for k in ("optimizer", "scaler") if k in state]
    state = {k: v for k, v in state.items() if k not in dropped}
    meta = dict(state.get("meta", {}))
    meta["portable_from"] = {"file": Path(src).name, "sha256": sha256_file(src), "dropped": dropped}
    return save_checkpoint(dst, {**state, "meta": meta})


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python -m zoo.checkpoints",
        description="Checkpoint utilities.",
        epilog="example: python -m zoo.checkpoints portable artifacts/checkpoints/ddrnet23_slim/camvid/ddrnet/last.pt "
               "trained/ddrnet23_slim/camvid/ddrnet/last.pt",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    port = sub.add_parser("portable", help="copy a checkpoint without its optimizer state (small enough to keep in git)")
    port.add_argument("src")
    port.add_argument("dst")
    args = p.parse_args(argv)
    try:
        digest = portable_copy(args.src, args.dst)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dst}  sha256 {digest}  ({Path(args.dst).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
