"""Plan a sweep, prepare artifacts once per model, run each cell in its own process.

Preparation (finding or training the FP32 checkpoint, exporting ONNX) happens here in the
parent and is cached in the artifact folder; each cell process only loads and measures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.backends import BACKENDS, get_backend
from bench.env import REPO, environment
from bench.results import SCHEMA, now_iso, write_record
from zoo.api import VARIANTS, load_fp32
from zoo.checkpoints import artifacts_dir
from zoo.errors import UsageError
from zoo.io import atomic_path, sha256_file
from zoo.profile import count_gmacs, count_params
from zoo.registry import get_entry

IMPLEMENTED_VARIANTS = ("fp32",)


@dataclass
class BenchConfig:
    models: list[str]
    variants: list[str] = field(default_factory=lambda: ["fp32"])
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    data: str = "synthetic"
    data_root: str | None = None
    split: str = "val"
    weights: str | None = None
    input_hw: tuple[int, int] | None = None
    batch: int = 1
    threads: int = 2
    out: str = "results"
    artifacts: str | None = None
    profile: str = "quick"
    timeout: float = 1800.0
    max_images: int | None = None
    iters: int | None = None          # overrides of the timing profile
    min_time: float | None = None
    warmup: int | None = None
    progress: bool = True
    train_epochs: int | None = None   # epochs of the quick training when no checkpoint exists


def expand(values: list[str], valid: tuple[str, ...] | list[str], what: str) -> list[str]:
    out: list[str] = []
    for v in values:
        if v == "all":
            out.extend(valid)
        elif v not in valid:
            raise UsageError(f"unknown {what} {v!r}; valid: {', '.join(valid)}, all")
        else:
            out.append(v)
    return list(dict.fromkeys(out))


@dataclass
class Prepared:
    model: str
    num_classes: int
    preprocess: dict
    weights_path: str
    weights_sha256: str
    weights_meta: dict
    artifacts: dict[str, dict]   # artifact kind -> {"path", "sha256", "size_mb", ...}
    params: int
    gmacs: float


def prepare_fp32(cfg: BenchConfig, model: str, input_hw: tuple[int, int], log: Callable[[str], None]) -> Prepared:
    """FP32 weights (cached, trained with the quick recipe if missing) and their exported artifacts."""
    from zoo import data as zdata

    entry = get_entry(model)
    card = zdata.load_card(cfg.data)
    loaded = load_fp32(entry.name, dataset=cfg.data, weights=cfg.weights, artifacts=cfg.artifacts,
                       data_root=cfg.data_root, threads=cfg.threads, progress=cfg.progress,
                       train_epochs=cfg.train_epochs)
    net = loaded.model.eval()
    preprocess = loaded.preprocess or zdata.Preprocess.from_card(card).to_dict()
    tag = loaded.sha256[:12] if loaded.sha256 else "random"
    export_dir = artifacts_dir(cfg.artifacts) / "export" / entry.name / cfg.data / tag
    h, w = input_hw

    torch_path = export_dir / "fp32.pt"
    if not torch_path.is_file():
        with atomic_path(torch_path) as tmp:
            torch.save(net.state_dict(), tmp)  # inference weights only (no aux heads, no optimizer)
    onnx_path = export_dir / f"fp32_{h}x{w}_b{cfg.batch}.onnx"
    if not onnx_path.is_file():
        from quant.export import export_onnx

        log(f"exporting {entry.name} to ONNX ({h}x{w}, opset 17, onnxsim) -> {onnx_path}")
        export_onnx(net, onnx_path, input_hw=(h, w), batch=cfg.batch)
    artifacts = {
        "torch": {"kind": "torch", "path": str(torch_path), "model": entry.name, "num_classes": loaded.num_classes},
        "onnx": {"kind": "onnx", "path": str(onnx_path)},
    }
    for art in artifacts.values():
        art["sha256"] = sha256_file(art["path"])
        art["size_mb"] = os.path.getsize(art["path"]) / 1e6
    return Prepared(
        model=entry.name, num_classes=loaded.num_classes, preprocess=preprocess, weights_path=str(loaded.path),
        weights_sha256=loaded.sha256, weights_meta=_meta_summary(loaded.meta), artifacts=artifacts,
        params=count_params(net), gmacs=count_gmacs(net, (h, w)),
    )


def _meta_summary(meta: dict) -> dict:
    keep = ("model", "dataset", "epoch", "seed", "created", "weights")
    out = {k: meta[k] for k in keep if k in meta}
    if isinstance(meta.get("recipe"), dict):
        out["recipe"] = meta["recipe"].get("name")
    if isinstance(meta.get("metrics"), dict):
        out["val_miou_at_training"] = meta["metrics"].get("miou")
    return out


def run_cell_process(spec: dict, timeout: float) -> dict:
    """Run one cell in a fresh interpreter; a crash or timeout becomes a failed result."""
    with tempfile.TemporaryDirectory(prefix="edgezoo-cell-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": str(REPO)}
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.cell", str(spec_path), str(out_path)],
                                  capture_output=True, text=True, timeout=timeout, env=env, cwd=os.getcwd())
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {timeout:.0f} s (raise --timeout)"}
        if out_path.is_file():
            return json.loads(out_path.read_text())
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "error": f"cell process exited with code {proc.returncode}: {tail[0][:300]}"}


def run_sweep(cfg: BenchConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> list[dict]:
    from zoo import data as zdata

    variants = expand(cfg.variants, VARIANTS, "variant")
    pending = [v for v in variants if v not in IMPLEMENTED_VARIANTS]
    if pending:
        raise UsageError(
            f"--quant {' '.join(pending)}: quantized variants arrive with issue #3 (quantization); "
            "only --quant fp32 is implemented so far"
        )
    backends = expand(cfg.backends, BACKENDS, "backend")
    models = [get_entry(m).name for m in cfg.models]
    card = zdata.load_card(cfg.data)
    input_hw = tuple(cfg.input_hw or card.input_size)
    if cfg.batch != 1:
        raise UsageError("--batch other than 1 is not supported yet (issue #4); use --batch 1")
    # Fail fast on a missing data root before any training or export work.
    zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.split)
    env = environment()
    records = []
    for model in models:
        prep = prepare_fp32(cfg, model, input_hw, log)
        for variant in variants:
            for backend in backends:
                artifact = prep.artifacts[get_backend(backend).artifact_kind]
                spec = {"model": prep.model, "variant": variant, "backend": backend, "dataset": cfg.data,
                        "data_root": cfg.data_root, "split": cfg.split, "input_hw": list(input_hw),
                        "threads": cfg.threads, "profile": cfg.profile, "artifact": artifact,
                        "preprocess": prep.preprocess, "max_images": cfg.max_images,
                        "timing_overrides": {"iters": cfg.iters, "min_time_s": cfg.min_time,
                                             "warmup_iters": cfg.warmup}}
                log(f"cell {prep.model} / {variant} / {backend}: measuring in a separate process ...")
                t0 = time.time()
                result = run_cell_process(spec, cfg.timeout)
                rec = {
                    "schema": SCHEMA, "model": prep.model, "variant": variant, "backend": backend,
                    "dataset": cfg.data, "split": cfg.split, "status": result.get("status", "failed"),
                    "error": result.get("error"), "input_hw": list(input_hw), "batch": cfg.batch,
                    "threads": cfg.threads, "profile": cfg.profile,
                    "metrics": result.get("metrics", {}), "images": result.get("images"),
                    "size_mb": artifact["size_mb"], "params": prep.params, "gmacs": prep.gmacs,
                    "latency_ms": result.get("latency_ms", {}), "fps": result.get("fps"),
                    "peak_rss_mb": result.get("peak_rss_mb"), "rss_delta_mb": result.get("rss_delta_mb"),
                    "baseline_rss_mb": result.get("baseline_rss_mb"), "load_s": result.get("load_s"),
                    "first_inference_ms": result.get("first_inference_ms"),
                    "artifact": {k: artifact[k] for k in ("kind", "path", "sha256", "size_mb")},
                    "weights": {"path": prep.weights_path, "sha256": prep.weights_sha256, **prep.weights_meta},
                    "preprocess": prep.preprocess, "samples_ms": result.get("samples_ms", []),
                    "cell_wall_s": time.time() - t0, "env": env, "timestamp": now_iso(),
                }
                if "traceback" in result:
                    rec["traceback"] = result["traceback"]
                path = write_record(cfg.out, rec)
                rec["_path"] = str(path)
                status = rec["status"] if rec["status"] == "ok" else f"{rec['status']}: {rec['error']}"
                log(f"  -> {status} ({path})")
                records.append(rec)
    return records


def markdown_table(records: list[dict]) -> str:
    from tabulate import tabulate

    rows = []
    for r in records:
        lat = r.get("latency_ms") or {}
        miou = (r.get("metrics") or {}).get("miou")
        rows.append([
            r["model"], r["variant"], r["backend"], r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}",
            f"{100 * miou:.2f}" if miou is not None else "-",
            f"{r['size_mb']:.2f}" if r.get("size_mb") is not None else "-",
            f"{lat['median']:.1f}" if lat.get("median") else "-",
            f"{lat['p90']:.1f}" if lat.get("p90") else "-",
            f"{r['fps']:.1f}" if r.get("fps") else "-",
            f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-",
            f"{r['rss_delta_mb']:.0f}" if r.get("rss_delta_mb") is not None else "-",
        ])
    headers = ["model", "variant", "backend", "status", "mIoU %", "size MB", "median ms", "p90 ms", "FPS",
               "peak RSS MB", "RSS delta MB"]
    return tabulate(rows, headers=headers, tablefmt="github")


def footer(cfg: BenchConfig, records: list[dict]) -> str:
    if not records:
        return ""
    r, env = records[0], records[0]["env"]
    h, w = r["input_hw"]
    return (f"{cfg.data}/{cfg.split}, {h}x{w}, batch {cfg.batch}, {cfg.threads} threads, profile {cfg.profile}; "
            f"CPU {env['cpu']['model']}; torch {env['torch']}, onnxruntime {env['onnxruntime']}; "
            f"commit {(env['git']['commit'] or 'none')[:10]}{' (dirty)' if env['git']['dirty'] else ''}")


def summary_as_dict(records: list[dict]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("samples_ms", "env")} for r in records]
