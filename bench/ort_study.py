"""Side-by-side speed study of the CPU INT8 paths of one network (issue #3's speed targets).

    python -m bench.ort_study --model ddrnet                      # synthetic data, 360x480, 2 threads
    python -m bench.ort_study --model ddrnet --data camvid --data-root ../shared/data/camvid

Builds, from the same FP32 weights and the same calibration images:

* ``fp32``           the FP32 ONNX on ONNX Runtime (the reference of the speed-up);
* ``ort-defaults``   ONNX Runtime's ``quantize_static`` as a user first calls it: QDQ, per-channel,
                     every other setting at its default (MinMax, INT8 activations and weights);
* ``ort-u8s8``       the same with UINT8 activations, the combination MLAS has its fast x86 kernels for;
* ``edgezoo-plain``  this project's static PTQ (`quant.ptq_static`: ORT pre-processing, U8S8 per
                     channel, all quantizable op types, float logits head) without graph rewrites;
* ``edgezoo``        the same plus the BatchNormalization -> INT8 depthwise-conv rewrite
                     (`quant.onnx_rewrites`): the artifact ``bench.run --quant static`` measures;
* ``torch-fx-int8``  PyTorch FX static INT8 (x86 / fbgemm kernels), `--no-torch` to skip;
* ``openvino-fp32``  the FP32 ONNX on OpenVINO's CPU plugin (float layers pinned to f32), and
* ``openvino-int8``  the ``edgezoo`` file itself on OpenVINO (oneDNN's INT8 kernels instead of
                     MLAS): the same bytes on a second runtime; `--no-openvino` to skip (skipped
                     with the reason when openvino is not installed).

Every variant is loaded into this one process and timed in interleaved rounds, so a drift of the
machine's speed (measured here: FP32 moving between 14.8 and 16.8 ms within minutes) hits all of
them alike; ratios are what this study reports. It also runs each variant on validation images
(mIoU and pixel agreement with FP32) and profiles each ONNX Runtime session per op type, so the
table says what each step bought and where the remaining time goes. Results go to
``results/ort_study/<model>_<data>_<H>x<W>_<cpu>.json`` and ``.md`` (written atomically).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zoo.errors import UsageError
from zoo.io import write_bytes, write_json

STUDY_VARIANTS = ("fp32", "ort-defaults", "ort-u8s8", "edgezoo-plain", "edgezoo", "torch-fx-int8", "openvino-fp32",
                  "openvino-int8")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_ort_baseline(pre_onnx: Path, out: Path, calib, *, u8_activations: bool) -> None:
    """ORT `quantize_static` at its defaults (QDQ, per-channel as the issue asks), optionally with
    UINT8 activations. `pre_onnx` went through ORT's pre-processing, as ORT's docs advise."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    import onnx

    from quant.calibrate import CalibrationReader
    from quant.ptq_static import input_spec

    name, _ = input_spec(onnx.load(str(pre_onnx)))
    kwargs = {"activation_type": QuantType.QUInt8} if u8_activations else {}
    with tempfile.TemporaryDirectory(prefix="edgezoo-study-") as tmp:
        result = Path(tmp) / "q.onnx"
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(str(pre_onnx), str(result), CalibrationReader(calib, name),
                            quant_format=QuantFormat.QDQ, per_channel=True, **kwargs)
        write_bytes(out, result.read_bytes())


def _ort_session(path: str, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()  # the same settings as bench.backends.onnxruntime.OrtBackend
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def op_profile(path: str, inputs: list[np.ndarray], threads: int, runs: int = 20) -> dict[str, float]:
    """Milliseconds per run spent in each op type (ORT's own profiler, kernel time only)."""
    with tempfile.TemporaryDirectory(prefix="edgezoo-prof-") as tmp:
        session = _ort_session(path, threads, profile_prefix=str(Path(tmp) / "p"))
        name = session.get_inputs()[0].name
        for i in range(runs + 5):
            session.run(None, {name: inputs[i % len(inputs)]})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    n_runs = sum(1 for e in events if e.get("name") == "model_run")
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    return {op: round(us / max(n_runs, 1) / 1000, 4) for op, us in per_op.most_common()}


def openvino_op_profile(path: str, inputs: list[np.ndarray], threads: int, runs: int = 20) -> dict[str, float]:
    """Milliseconds per run per layer type and kernel precision ("Convolution/I8") on OpenVINO's
    CPU plugin (its performance counters), with the settings of `bench.backends.openvino`."""
    from bench.backends.openvino import OpenVinoBackend, import_openvino

    ov = import_openvino()
    compiled = ov.Core().compile_model(path, "CPU", {**OpenVinoBackend.config(threads), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    for i in range(5):
        request.infer({0: inputs[i % len(inputs)]})
    per_op: collections.Counter = collections.Counter()
    for i in range(runs):
        request.infer({0: inputs[i % len(inputs)]})
        for info in request.profiling_info:
            precision = info.exec_type.rsplit("_", 1)[-1] if "_" in info.exec_type else info.exec_type
            per_op[f"{info.node_type}/{precision}"] += info.real_time.total_seconds() * 1e6
    return {op: round(us / runs / 1000, 4) for op, us in per_op.most_common() if us > 0}


# Which bench backend runs each kind of study variant.
RUNNER_BACKENDS = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}


class _Runner:
    """One loaded variant: `infer(x) -> logits`, through the bench backends."""

    def __init__(self, name: str, artifact: dict, kind: str, threads: int):
        from bench.backends import get_backend

        self.name, self.artifact, self.kind = name, artifact, kind
        self.backend = get_backend(RUNNER_BACKENDS[kind])()
        self.backend.load(artifact, threads=threads)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.backend.infer(x)


def _size(runner: _Runner) -> dict:
    """Bytes a deployment ships, as bench.runner reports them: the ONNX file, the PyTorch INT8
    TorchScript file, or (where the cell converts the float calibration state itself) the converted
    state dict; `size_basis` says which."""
    art = runner.artifact
    if art.get("size_basis"):
        return {"bytes": art["bytes"], "size_basis": art["size_basis"]}
    return {"bytes": Path(art["path"]).stat().st_size, "size_basis": "file"}


def interleaved_timing(runners: list[_Runner], inputs: list[np.ndarray], *, rounds: int, iters: int,
                       warmup: int, progress: bool = True) -> dict[str, list[float]]:
    """Latency samples (ms) per runner, collected round-robin: round r times every runner for
    `iters` iterations before round r + 1 starts."""
    from tqdm import tqdm

    samples: dict[str, list[float]] = {r.name: [] for r in runners}
    for r in runners:
        for i in range(warmup):
            r.infer(inputs[i % len(inputs)])
    bar = tqdm(total=rounds * len(runners), desc="timing rounds", disable=not progress, file=sys.stderr)
    for _ in range(rounds):
        for r in runners:
            for i in range(iters):
                t0 = time.perf_counter()
                r.infer(inputs[i % len(inputs)])
                samples[r.name].append((time.perf_counter() - t0) * 1000)
            bar.update(1)
    bar.close()
    return samples


def accuracy(runner: _Runner, images: list[np.ndarray], labels: np.ndarray, pre, num_classes: int,
             reference: list[np.ndarray] | None) -> tuple[dict, list[np.ndarray]]:
    from bench import imageops
    from bench.metrics import Agreement, ConfusionMatrix

    conf, agree, masks = ConfusionMatrix(num_classes, 255), Agreement(), []
    for i, image in enumerate(images):
        mask = imageops.postprocess(runner.infer(pre([image])), labels.shape[1:])[0]
        conf.update(mask, labels[i])
        if reference is not None:
            agree.update(mask, reference[i])
        masks.append(mask)
    return {"miou": round(100 * conf.scores().miou, 3), "agreement": agree.value}, masks


def run_study(model: str, *, data: str = "synthetic", data_root: str | None = None, weights: str | None = None,
              input_hw: tuple[int, int] | None = None, threads: int = 2, rounds: int = 8, iters: int = 25,
              warmup: int = 20, images: int = 50, calib_images: int = 256, calib_method: str = "percentile",
              torch_int8: bool = True, openvino: bool = True, artifacts: str | None = None, out: str = "results",
              progress: bool = True, log: Callable[[str], None] = _log) -> dict:
    """Build the variants, measure them side by side, write the JSON + Markdown record; returns it."""
    from bench import imageops
    from bench.env import environment
    from bench.runner import BenchConfig, prepare_evalset, prepare_model
    from bench.timing import summarize
    from quant.ptq_static import ort_pre_process, quantize_static_onnx
    from zoo import data as zdata

    card = zdata.load_card(data)
    if card.task != "segmentation":
        raise UsageError(f"bench.ort_study measures segmentation networks; {data!r} is a {card.task} dataset")
    cfg = BenchConfig(models=[model], data=data, data_root=data_root, weights=weights, threads=threads,
                      artifacts=artifacts, calib_images=calib_images, calib_method=calib_method,
                      progress=progress, max_images=images)
    hw = tuple(input_hw) if input_hw else tuple(card.input_size)
    prep = prepare_model(cfg, model)
    fp32 = prep.artifact("onnx", hw, 1, log)
    calib = prep.calibration(cfg, hw, log)
    folder = prep.export_dir / "ort_study"
    tag = f"{calib.sha256[:10]}_{hw[0]}x{hw[1]}"
    arts: dict[str, tuple[dict, str]] = {"fp32": (fp32, "onnx")}

    with tempfile.TemporaryDirectory(prefix="edgezoo-study-") as tmp:
        pre = Path(tmp) / "fp32_pre.onnx"
        for name, u8 in (("ort-defaults", False), ("ort-u8s8", True)):
            path = folder / f"{name}-minmax-{tag}.onnx"
            if not path.is_file():
                if not pre.is_file():
                    ort_pre_process(Path(fp32["path"]), pre)
                log(f"{name}: ORT quantize_static (QDQ, per-channel{', UINT8 activations' if u8 else ''}) -> {path}")
                build_ort_baseline(pre, path, calib, u8_activations=u8)
            arts[name] = ({"kind": "onnx", "path": str(path)}, "onnx")
    plain = folder / f"edgezoo-plain-{calib_method}-{tag}.onnx"
    if not plain.is_file():
        log(f"edgezoo-plain: static PTQ without graph rewrites -> {plain}")
        quantize_static_onnx(fp32["path"], plain, calib, target="ort", method=calib_method, bn_as_conv=False)
    arts["edgezoo-plain"] = ({"kind": "onnx", "path": str(plain)}, "onnx")
    arts["edgezoo"] = (prep.variant_artifact(cfg, "onnx", "static", "onnxruntime", hw, 1, log), "onnx")
    if torch_int8:
        arts["torch-fx-int8"] = (prep.variant_artifact(cfg, "torch", "static", "torch", hw, 1, log), "torch")
    skipped: dict[str, str] = {}
    if openvino:
        from bench.backends import get_backend

        ok, why = get_backend("openvino").available()
        if ok:
            arts["openvino-fp32"] = (arts["fp32"][0], "openvino")
            arts["openvino-int8"] = (arts["edgezoo"][0], "openvino")
        else:
            skipped = {"openvino-fp32": why, "openvino-int8": why}
            log(f"openvino variants skipped: {why}")

    ev = prepare_evalset(cfg, hw, log)
    with np.load(ev["labels"]) as z:
        labels = z["labels"]
    pictures = [imageops.read_rgb(p) for p in ev["images"]]
    pre_fn = imageops.Preprocessor(prep.preprocess, hw)
    timing_inputs = [pre_fn([im]) for im in pictures[:16]]

    runners = [_Runner(name, art, kind, threads) for name, (art, kind) in arts.items()]
    rows: dict[str, dict[str, Any]] = {}
    reference = None
    for r in runners:
        log(f"accuracy of {r.name} on {len(pictures)} {data}/{cfg.split} images")
        acc, masks = accuracy(r, pictures, labels, pre_fn, prep.num_classes, reference)
        if r.name == "fp32":
            reference = masks
            acc["agreement"] = 1.0
        rows[r.name] = {"variant": r.name, "runtime": RUNNER_BACKENDS[r.kind], "path": r.artifact["path"],
                        **_size(r), **acc}
        if r.kind == "openvino":
            rows[r.name]["int8_compute_layers"] = r.backend.info()["int8_compute_layers"]
    load_before = os.getloadavg()[0]
    samples = interleaved_timing(runners, timing_inputs, rounds=rounds, iters=iters, warmup=warmup, progress=progress)
    load_after = os.getloadavg()[0]
    for name, s in samples.items():
        rows[name]["latency_ms"] = summarize(s)
    base = {k: rows[k]["latency_ms"]["median"] for k in ("fp32", "ort-defaults", "ort-u8s8")}
    for row in rows.values():
        med = row["latency_ms"]["median"]
        row["speedup"] = {f"vs_{k}": round(v / med, 3) for k, v in base.items()}
    for name, (art, kind) in arts.items():
        if kind in ("onnx", "openvino"):
            log(f"profiling {name} per op type")
            profile = op_profile if kind == "onnx" else openvino_op_profile
            rows[name]["op_ms"] = profile(art["path"], timing_inputs, threads)

    record = {
        "study": "ort_int8_speed", "model": prep.model, "dataset": data, "split": cfg.split,
        "input_hw": list(hw), "batch": 1, "threads": threads, "images": len(pictures),
        "calibration": calib.as_dict(), "weights": {"path": prep.weights_path, "sha256": prep.weights_sha256},
        "timing": {"rounds": rounds, "iters_per_round": iters, "warmup": warmup, "interleaved": True,
                   "load_average": [round(load_before, 2), round(load_after, 2)]},
        "variants": list(rows.values()), "skipped": skipped, "environment": environment(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir = Path(out) / "ort_study"
    stem = f"{prep.model}_{data}_{hw[0]}x{hw[1]}_{cpu_tag()}"
    write_json(out_dir / f"{stem}.json", record)
    write_bytes(out_dir / f"{stem}.md", markdown(record).encode())
    record["paths"] = [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.md")]
    return record


def cpu_tag() -> str:
    """Short name of the CPU's INT8 class, part of the record's file name: ratios between INT8 and
    FP32 depend on it (VNNI doubles MLAS's INT8 rate), so records of two machines must not overwrite
    each other."""
    from bench.env import environment
    from quant.ptq_static import cpu_has_vnni

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64-dotprod" if cpu_has_vnni() else "arm64"
    # The vendor too: an AMD and an Intel VNNI CPU run MLAS's kernels at different INT8/FP32 ratios.
    vendor = {"GenuineIntel": "intel-", "AuthenticAMD": "amd-"}.get(_cpu_vendor(), "")
    # AMX tiles (oneDNN: OpenVINO, PyTorch) multiply INT8 several times faster than VNNI alone.
    if "amx_int8" in environment()["cpu"]["flags"]:
        return vendor + "amx"
    return vendor + ("vnni" if cpu_has_vnni() else machine)


def _cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def markdown(record: dict) -> str:
    from tabulate import tabulate

    rows = []
    for v in record["variants"]:
        lat = v["latency_ms"]
        top = sorted(v.get("op_ms", {}).items(), key=lambda kv: -kv[1])[:4]
        rows.append([v["variant"], v.get("runtime", "-"), f"{v['miou']:.2f}", f"{100 * v['agreement']:.2f}" if v.get("agreement") is not None else "-",
                     f"{v['bytes'] / 1e6:.2f}", f"{lat['median']:.2f}", f"{lat['p90']:.2f}",
                     f"{v['speedup']['vs_fp32']:.2f}x", f"{v['speedup']['vs_ort-defaults']:.2f}x",
                     f"{v['speedup']['vs_ort-u8s8']:.2f}x", ", ".join(f"{k} {ms:.2f}" for k, ms in top) or "-"])
    table = tabulate(rows, headers=["variant", "runtime", "mIoU", "agree %", "MB", "median ms", "p90 ms", "vs FP32",
                                    "vs ORT defaults", "vs ORT U8S8", "top ops (ms/run, profiled)"],
                     tablefmt="github")
    env = record["environment"]
    cpu = env.get("cpu", {}).get("model") if isinstance(env.get("cpu"), dict) else env.get("cpu")
    t = record["timing"]
    return (f"# INT8 speed study: {record['model']} on {record['dataset']}/{record['split']} "
            f"({record['input_hw'][0]}x{record['input_hw'][1]}, batch 1, {record['threads']} threads)\n\n"
            f"{table}\n\nInterleaved timing: {t['rounds']} rounds x {t['iters_per_round']} iterations per variant "
            f"after {t['warmup']} warm-up runs; load average {t['load_average'][0]} -> {t['load_average'][1]}. "
            f"mIoU and agreement on {record['images']} images; op times from a separate profiled session "
            f"(profiling inflates them). CPU: {cpu}; {record['created']}.\n"
            + "".join(f"\nSkipped {name}: {why}" for name, why in (record.get("skipped") or {}).items()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.ort_study", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m bench.ort_study --model ddrnet\n"
               "  python -m bench.ort_study --model ddrnet --data camvid --data-root ../shared/data/camvid --rounds 12")
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--weights", help="FP32 checkpoint (default: the cached one, trained with the quick recipe if missing)")
    p.add_argument("--input-hw", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--iters", type=int, default=25, help="timed iterations per variant per round")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--images", type=int, default=50, help="validation images for mIoU / agreement")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy"],
                   help="calibration of the edgezoo variants (default: percentile, bench.run's segmentation default on ONNX)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch FX INT8 variant")
    p.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO variants")
    p.add_argument("--artifacts")
    p.add_argument("--out", default="results")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("threads", "rounds", "iters", "images", "calib_images"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    from zoo.errors import user_errors

    with user_errors():
        record = run_study(args.model, data=args.data, data_root=args.data_root, weights=args.weights,
                           input_hw=tuple(args.input_hw) if args.input_hw else None, threads=args.threads,
                           rounds=args.rounds, iters=args.iters, warmup=args.warmup, images=args.images,
                           calib_images=args.calib_images, calib_method=args.calib_method,
                           torch_int8=not args.no_torch, openvino=not args.no_openvino, artifacts=args.artifacts,
                           out=args.out,
                           progress=not args.no_progress)
    print(markdown(record))
    print(f"written: {', '.join(record['paths'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
