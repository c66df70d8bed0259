#!/usr/bin/env bash
# The small benchmark suite that CI runs on the self-hosted Jetson runner (.github/workflows/bench.yml),
# and the command that refreshes its baseline (docs/benchmarking.md, "Refreshing the baseline").
# Both must run exactly these arguments: bench.compare matches cells by their key (model, variant,
# backend, precision, device, data, split, size, batch, threads, weights, profile, image subset).
#
# Usage: bench/ci_suite.sh OUT_DIR [extra bench.run arguments]     (PYTHON=... to pick the interpreter)
set -euo pipefail
out=${1:?usage: bench/ci_suite.sh OUT_DIR [extra bench.run arguments]}
shift
exec "${PYTHON:-python}" -m bench.run \
    --model ddrnet23_slim espnet_p2q8 --quant fp32 \
    --backend torch-cuda onnxruntime tensorrt \
    --weights random --seed 0 \
    --data synthetic --split val --max-images 20 \
    --input-size 360x480 --batch 1 --threads 4 \
    --profile ci --timeout 1800 --no-progress \
    --out "$out" "$@"
