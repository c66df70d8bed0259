"""Benchmark zoo networks: accuracy, parity, size, latency/FPS and peak RAM, one process per cell.

A cell is one (model, variant, backend, input size, batch); --model, --quant, --backend,
--input-size and --batch each take several values (and the first three `all`). A cell that
crashes, hangs past --timeout or has no usable backend becomes a record with status failed or
skipped and the reason; the sweep goes on. Rerunning skips cells already stored with status ok
(same model, variant, backend, data, split, size, batch, threads, weights, profile, image subset)
unless --force.

Examples:
    python -m bench.run --model ddrnet --quant fp32
    python -m bench.run --model ddrnet --quant qat          # fine-tunes a QAT checkpoint first if none is cached
    python -m bench.run --model ddrnet --quant all --backend torch onnxruntime
    python -m bench.run --model ddrnet espnet --backend onnxruntime --threads 2
    python -m bench.run --model all --weights random --backend torch onnxruntime --input-size 360x480 720x960
    python -m bench.run --model ddrnet --weights random --batch 1 4 --profile ci
    python -m bench.run --model espnet --weights ../shared/weights/espnet_p_2_q_8_camvid.pth \\
        --data camvid --data-root ../shared/data/camvid --profile release
    python -m bench.run --model ddrnet --quant fp32 static --backend onnxruntime openvino   # one QDQ file, two CPU runtimes
    python -m bench.run --model ddrnet --backend tensorrt --dla-core 0        # Jetson, TensorRT installed
    python -m bench.run --model yolov5n --data coco --data-root ../shared/data/coco-tiny \\
        --weights ../shared/weights/yolov5n.pt --quant fp32 static dynamic --backend torch onnxruntime
    python -m bench.run --model yolov5n --data synthetic-det --weights random --input-size 320x320
    python -m bench.run --model yolov5n --data coco --data-root ../shared/data/coco-tiny \\
        --weights ../shared/weights/yolov5n.pt --quant static --backend onnxruntime \\
        --keep-float-from artifacts/sensitivity/yolov5/sensitivity.json   # python -m quant.sensitivity's float layers
    python -m bench.run --model panoptic_lite --data synthetic --quant fp32 static --backend torch onnxruntime

Detection datasets (COCO-format, synthetic-det): each cell letterboxes to one fixed input size
(default: the card's long side as a square, 640x640 for coco; sides must be multiples of 32) and
records COCO mAP50-95 / mAP50 (pycocotools), box agreement with the PyTorch FP32 reference, and
model-only, NMS (post-processing) and end-to-end latency apart. All four variants run for
detectors: the box decode stays float (an FX leaf in PyTorch INT8, float head convs in the ONNX
Runtime QDQ), and QAT fine-tunes on the dataset's training split (python -m quant.qat).

Instance networks (panoptic_lite) run on segmentation data with instance ids (synthetic,
synthetic-lt; fp32, static, dynamic) and record PQ / SQ / RQ over the thing classes, PQ on
touching objects, mIoU of the semantic argmax, and agreement with the PyTorch FP32 reference in
pixels (semantic argmax) and in instances (PQ against its instances). End to end is resize +
normalise + model + argmax + centre NMS + grouping (numpy); pre- and post-processing are timed
apart inside it. ONNX Runtime sessions of these cells stop spinning when a run returns
(session.force_spinning_stop), so the post-processing does not compete with idle workers.

Timing profiles (warm-up, then timed: at least N iterations and S seconds):
    quick    max(10 it, 1 s), max(50 it, 5 s)       default, for development
    ci       max(50 it, 5 s), max(300 it, 10 s)
    release  max(50 it, 5 s), max(1000 it, 30 s)    use this for published numbers

With no checkpoint for (model, data) in the artifact cache, an FP32 model is first trained with
the quick recipe (announced, a few minutes on a CPU, then cached; detectors use the quick
detection recipe of python -m zoo.det.train; --weights skips it); likewise `--quant qat`
fine-tunes a QAT checkpoint from it (python -m quant.qat) when none is cached. Results: one JSON record per
cell under --out, and a Markdown table on stdout. Compare two result sets with
`python -m bench.compare BASELINE CANDIDATE`.
"""
from __future__ import annotations

import argparse
import re
import sys
import time

from bench.backends import BACKENDS
from bench.timing import DEFAULT_CV_THRESHOLD
from zoo.api import VARIANTS


def parse_sizes(tokens: list[str]) -> list[tuple[int, int]]:
    """'360 480' or '360x480 720x960' (or a mix) -> [(360, 480), ...]."""
    sizes: list[tuple[int, int]] = []
    pending: list[int] = []
    for tok in tokens:
        m = re.fullmatch(r"(\d+)[xX](\d+)", tok)
        if m:
            if pending:
                raise argparse.ArgumentTypeError(f"--input-size: {pending[0]} has no width")
            sizes.append((int(m.group(1)), int(m.group(2))))
        elif tok.isdigit():
            pending.append(int(tok))
            if len(pending) == 2:
                sizes.append((pending[0], pending[1]))
                pending = []
        else:
            raise argparse.ArgumentTypeError(f"--input-size: {tok!r} is neither HxW nor an integer")
    if pending:
        raise argparse.ArgumentTypeError(f"--input-size: {pending[0]} has no width (give H W pairs or HxW)")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="network names or aliases (python -m zoo.list), or all")
    p.add_argument("--quant", nargs="+", default=["fp32"], help=f"variants: {', '.join(VARIANTS)}, all")
    p.add_argument("--backend", nargs="+", default=["all"],
                   help=f"backends: {', '.join(BACKENDS)}, all (default; unusable ones become skipped cells)")
    p.add_argument("--data", default="synthetic", help="dataset card (default: synthetic, generated locally)")
    p.add_argument("--data-root", help="dataset folder (default: the card's)")
    p.add_argument("--split", default="val")
    p.add_argument("--weights", help="checkpoint path, or 'random' for seeded untrained weights (speed and size only); "
                   "default: the best-scoring cached or trained/ FP32 weights, else a quick model trained first")
    p.add_argument("--seed", type=int, default=0, help="seed of --weights random (default 0)")
    p.add_argument("--input-size", nargs="+", metavar="HxW",
                   help="one or more sizes as 'H W' pairs or HxW (default: the dataset card's; detection: "
                        "its long side as a square, e.g. 640x640 for coco)")
    p.add_argument("--batch", type=int, nargs="+", default=[1],
                   help="batch sizes (default 1); > 1 stacks images and reports images/s")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every backend (default 2)")
    p.add_argument("--profile", choices=("quick", "ci", "release"), default="quick",
                   help="timing profile (default quick; release for published numbers)")
    p.add_argument("--iters", type=int, help="override the profile's minimum timed iterations (drops its time floors)")
    p.add_argument("--min-time", type=float, help="override the profile's minimum timed seconds")
    p.add_argument("--warmup", type=int, help="override the profile's warm-up iterations (drops its time floors)")
    p.add_argument("--trials", type=int, help="repeat the timed loop N times in the cell process (default 1)")
    p.add_argument("--cv-threshold", type=float, default=DEFAULT_CV_THRESHOLD,
                   help=f"flag cells whose latency CV exceeds this as unstable (default {DEFAULT_CV_THRESHOLD})")
    p.add_argument("--timing-images", type=int, default=16, help="validation images cycled by the timing loops")
    p.add_argument("--max-images", type=int, help="evaluate accuracy on the first N images only")
    p.add_argument("--train-epochs", type=int,
                   help="epochs of the quick FP32 training done when no checkpoint exists (default: the recipe's: "
                        "12 for segmentation; see zoo.recipes.DET_RECIPES['quick'] for detection)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per cell (default 1800)")
    p.add_argument("--force", action="store_true", help="rerun cells already stored in --out")
    p.add_argument("--calib-images", type=int, default=256,
                   help="static PTQ: calibration images, a seeded subset of the train split (default 256)")
    p.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"), default=None,
                   help="static PTQ calibration of activations (default: the task's for the backend: percentile for "
                        "detection on ONNX Runtime / TensorRT and entropy for detection on PyTorch, which kept "
                        "the most yolov5n mAP50-95 on each; for segmentation percentile on ONNX Runtime / TensorRT and "
                        "entropy on PyTorch, the best on ESPNet and DDRNet). "
                        "Each record states the method used. ONNX Runtime uses its calibrator of that name; "
                        "PyTorch FX uses MinMaxObserver, the same 99.999th percentile of |x| as ORT, or torch's "
                        "HistogramObserver for entropy (an L2 error search, not ORT's KL divergence)")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--keep-float-from", metavar="JSON",
                   help="static ONNX cells: leave the layers a python -m quant.sensitivity run kept in float "
                        "(its sensitivity.json, or the INT8 model's sidecar) unquantized; part of the artifact key "
                        "and recorded with the artifact")
    p.add_argument("--qat-epochs", type=int,
                   help="QAT fine-tuning epochs when no QAT checkpoint exists (default: a tenth of the FP32 recipe's, >= 2)")
    p.add_argument("--dla-core", type=int, help="tensorrt/onnxruntime-trt: run on this DLA core (GPU fallback)")
    p.add_argument("--trt-precision", choices=("fp16", "fp32"), default="fp16",
                   help="precision of TensorRT engines built from the FP32 ONNX (default fp16)")
    p.add_argument("--out", default="results", help="folder for the JSON records (default ./results)")
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace):
    from bench.runner import BenchConfig

    sizes = parse_sizes(args.input_size) if args.input_size else None
    keep_float: list[str] = []
    if args.keep_float_from:
        from quant.sensitivity import kept_float_from

        keep_float = kept_float_from(args.keep_float_from)
    cfg = BenchConfig(models=args.model, variants=args.quant, backends=args.backend, data=args.data,
                      data_root=args.data_root, split=args.split, weights=args.weights, seed=args.seed,
                      input_hw=sizes, batch=args.batch, threads=args.threads, out=args.out,
                      artifacts=args.artifacts, profile=args.profile, timeout=args.timeout,
                      max_images=args.max_images, iters=args.iters, min_time=args.min_time,
                      warmup=args.warmup, trials=args.trials, cv_threshold=args.cv_threshold,
                      timing_images=args.timing_images, force=args.force, progress=not args.no_progress,
                      train_epochs=args.train_epochs, dla_core=args.dla_core, trt_precision=args.trt_precision,
                      calib_images=args.calib_images, calib_method=args.calib_method, calib_seed=args.calib_seed,
                      qat_epochs=args.qat_epochs, keep_float=tuple(keep_float), keep_float_from=args.keep_float_from)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_sizes(args.input_size or [])
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from bench.runner import footer, markdown_table, run_sweep, sweep_summary
    from zoo.errors import user_errors

    started = time.perf_counter()
    with user_errors():
        cfg = config_from_args(args)
        records = run_sweep(cfg)
    print(markdown_table(records))
    print()
    print(footer(cfg, records))
    print(sweep_summary(records, time.perf_counter() - started))
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
