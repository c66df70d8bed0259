"""How much does the harness add to what it measures? `python -m bench.overhead`

Times one ONNX Runtime session two ways, in alternating rounds so that drift (thermal, other
load) hits both alike:

    bare     t = perf_counter_ns(); session.run(...); samples.append(perf_counter_ns() - t)
    harness  bench.timing.measure(OrtBackend.infer, ...), exactly what a cell does

in short alternating blocks (drift in the machine's load hits both alike), and reports the ratio
of the pooled medians (with a bootstrap CI), the median of per-block-pair ratios, the ratio of
loop wall times per iteration (which also catches bookkeeping outside the timed call), and the
harness's fixed cost per call measured on a no-op (the part that does not depend on noise).

    python -m bench.overhead --model ddrnet --input-size 360 480 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _wrapper_cost_ms(backend, inputs) -> float:
    """Extra cost of OrtBackend.infer over a bare session.run: a method call, a one-key dict and
    a list index. Timed on a stand-in session whose run() does nothing."""
    class _Null:
        def run(self, names, feeds):
            return [None]

    real = backend.session
    backend.session = _Null()
    try:
        n = 20000
        t = time.perf_counter_ns()
        for k in range(n):
            backend.infer(inputs[k % len(inputs)])
        wrapped = (time.perf_counter_ns() - t) / n
        null, name = _Null(), backend.input_name
        t = time.perf_counter_ns()
        for k in range(n):
            null.run(None, {name: inputs[k % len(inputs)]})
        direct = (time.perf_counter_ns() - t) / n
    finally:
        backend.session = real
    return max(0.0, wrapped - direct) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ddrnet")
    p.add_argument("--data", default="camvid", help="dataset card (for classes and normalisation)")
    p.add_argument("--input-size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block", type=int, default=5, help="timed calls per block (blocks alternate bare/harness)")
    p.add_argument("--rounds", type=int, default=100, help="bare/harness block pairs")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)

    from bench.backends.onnxruntime import OrtBackend
    from bench.imageops import preprocess_batch
    from bench.runner import BenchConfig, prepare_model
    from bench.timing import TimingProfile, measure

    hw = tuple(args.input_size)
    cfg = BenchConfig(models=[args.model], data=args.data, weights="random", input_hw=hw, threads=args.threads,
                      artifacts=args.artifacts, progress=False)
    prep = prepare_model(cfg, args.model)
    artifact = prep.artifact("onnx", hw, 1, lambda m: print(m, file=sys.stderr))
    rng = np.random.default_rng(0)
    inputs = [preprocess_batch([rng.integers(0, 256, (*hw, 3), dtype=np.uint8)], prep.preprocess) for _ in range(16)]

    backend = OrtBackend()
    backend.load(artifact, threads=args.threads)
    sess, name = backend.session, backend.input_name
    for k in range(args.warmup):
        sess.run(None, {name: inputs[k % len(inputs)]})

    # 1. The harness's fixed cost per call, on a no-op: what measure() adds around fn(x).
    noop_profile = TimingProfile("noop", warmup_iters=100, warmup_s=0.0, iters=20000, min_time_s=0.0)
    harness_noop = float(np.median(measure(lambda x: None, inputs, noop_profile)["samples_ms"]))
    bare_noop = []
    for k in range(20000):
        x = inputs[k % len(inputs)]
        t = time.perf_counter_ns()
        (lambda x: None)(x)
        bare_noop.append((time.perf_counter_ns() - t) / 1e6)
    wrapper_ms = _wrapper_cost_ms(backend, inputs)
    fixed_ms = max(0.0, harness_noop - float(np.median(bare_noop))) + wrapper_ms

    # 2. The real thing, in short alternating blocks so that drift in the machine's load
    #    (another job on the cores, clocks) hits both alike; ratios are taken per block pair.
    profile = TimingProfile("overhead", warmup_iters=0, warmup_s=0.0, iters=args.block, min_time_s=0.0)
    bare: list[float] = []
    harness: list[float] = []
    pair_ratios = []
    wall = {"bare": 0.0, "harness": 0.0}
    for r in range(args.rounds):
        block = {}
        for mode in (("bare", "harness") if r % 2 == 0 else ("harness", "bare")):
            t0 = time.perf_counter()
            if mode == "bare":
                got = []
                for k in range(args.block):
                    x = inputs[k % len(inputs)]
                    t = time.perf_counter_ns()
                    sess.run(None, {name: x})
                    got.append((time.perf_counter_ns() - t) / 1e6)
            else:
                got = measure(backend.infer, inputs, profile)["samples_ms"]
            wall[mode] += time.perf_counter() - t0
            block[mode] = got
        bare += block["bare"]
        harness += block["harness"]
        pair_ratios.append(float(np.median(block["harness"]) / np.median(block["bare"])))
        if (r + 1) % max(1, args.rounds // 6) == 0:
            print(f"block pair {r + 1}/{args.rounds}: bare median {np.median(bare):.2f} ms, harness median "
                  f"{np.median(harness):.2f} ms, median pair ratio {np.median(pair_ratios):.4f}", file=sys.stderr)
    from bench.compare import ratio_ci

    n = len(bare)
    ci = ratio_ci(bare, harness, n_boot=2000)
    out = {
        "model": prep.model, "input_hw": list(hw), "threads": args.threads, "iters_per_mode": n,
        "block": args.block,
        "bare_median_ms": float(np.median(bare)), "harness_median_ms": float(np.median(harness)),
        "median_overhead": float(np.median(harness) / np.median(bare) - 1),
        "median_overhead_ci95": [ci[0] - 1, ci[1] - 1],
        "paired_block_overhead": float(np.median(pair_ratios) - 1),
        "bare_wall_ms_per_iter": 1000 * wall["bare"] / n, "harness_wall_ms_per_iter": 1000 * wall["harness"] / n,
        "wall_overhead": float(wall["harness"] / wall["bare"] - 1),
        "bare_cv": float(np.std(bare, ddof=1) / np.mean(bare)),
        "harness_cv": float(np.std(harness, ddof=1) / np.mean(harness)),
        "noop_harness_sample_us": 1000 * harness_noop, "noop_bare_sample_us": 1000 * float(np.median(bare_noop)),
        "infer_wrapper_us": 1000 * wrapper_ms,
        "fixed_cost_per_call_ms": fixed_ms,
        "fixed_cost_fraction_of_median": fixed_ms / float(np.median(bare)),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        from zoo.io import write_json

        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
