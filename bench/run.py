"""Benchmark zoo networks: accuracy, size, latency/FPS and peak RAM, one process per cell.

Examples:
    python -m bench.run --model ddrnet --quant fp32
    python -m bench.run --model ddrnet espnet --backend onnxruntime --threads 2
    python -m bench.run --model espnet --weights ../shared/weights/espnet_p_2_q_8_camvid.pth \\
        --data camvid --data-root ../shared/data/camvid
    python -m bench.run --model ddrnet23 --weights random --input-size 1024 2048 --backend onnxruntime

With no checkpoint for (model, data) in the artifact cache, an FP32 model is first trained with
the quick recipe (announced, a few minutes on a CPU, then cached). Results: one JSON record
per cell under --out, and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import sys

from bench.backends import BACKENDS
from zoo.api import VARIANTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="network names or aliases (python -m zoo.list)")
    p.add_argument("--quant", nargs="+", default=["fp32"], help=f"variants: {', '.join(VARIANTS)}, all")
    p.add_argument("--backend", nargs="+", default=["all"], help=f"backends: {', '.join(BACKENDS)}, all")
    p.add_argument("--data", default="synthetic", help="dataset card (default: synthetic, generated locally)")
    p.add_argument("--data-root", help="dataset folder (default: the card's)")
    p.add_argument("--split", default="val")
    p.add_argument("--weights", help="checkpoint path, or 'random' for untrained weights (speed and size only)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the dataset card's")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every backend (default 2)")
    p.add_argument("--profile", choices=("quick", "ci", "release"), default="quick", help="timing profile")
    p.add_argument("--train-epochs", type=int,
                   help="epochs of the quick FP32 training done when no checkpoint exists (default: the recipe's 12)")
    p.add_argument("--iters", type=int, help="override the profile's minimum timed iterations")
    p.add_argument("--min-time", type=float, help="override the profile's minimum timed seconds")
    p.add_argument("--warmup", type=int, help="override the profile's warm-up iterations")
    p.add_argument("--max-images", type=int, help="evaluate accuracy on the first N images only")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per cell")
    p.add_argument("--out", default="results", help="folder for the JSON records (default ./results)")
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.runner import BenchConfig, footer, markdown_table, run_sweep
    from zoo.errors import user_errors

    cfg = BenchConfig(models=args.model, variants=args.quant, backends=args.backend, data=args.data,
                      data_root=args.data_root, split=args.split, weights=args.weights,
                      input_hw=tuple(args.input_size) if args.input_size else None, batch=args.batch,
                      threads=args.threads, out=args.out, artifacts=args.artifacts, profile=args.profile,
                      timeout=args.timeout, max_images=args.max_images,
                      iters=args.iters, min_time=args.min_time, warmup=args.warmup, progress=not args.no_progress,
                      train_epochs=args.train_epochs)
    with user_errors():
        records = run_sweep(cfg)
    print(markdown_table(records))
    print()
    print(footer(cfg, records))
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
