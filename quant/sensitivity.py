"""Per-layer quantization sensitivity and mixed precision for static PTQ (ONNX Runtime QDQ).

1. **Per-layer error.** ONNX Runtime's `qdq_loss_debug` runs the float and the QDQ model with every
   intermediate tensor exposed and matches them by name. For each quantized node we take the SQNR
   (dB) of its output against the float model's, and the *noise it adds*: the SQNR of its inputs
   minus the SQNR of its output. Ranking by added noise points at the layers whose own
   quantization hurts, not at the late layers that merely inherit earlier error.
2. **Mixed precision.** `search_mixed_precision` quantizes everything, scores the result on
   held-out images (the validation split; calibration uses training images), and while the score
   is below ``target_retention`` x FP32 keeps the 1, 2, 4, 8 ... most noise-adding layers in float
   (then bisects back to the smallest such set). Calibration runs once: ORT's calibration cache
   holds the ranges for every re-quantization. The artifact lists the layers kept in float.

    python -m quant.sensitivity --model ddrnet --data camvid --data-root ../shared/data/camvid --top 15
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from quant.calibrate import CalibrationData, CalibrationReader, QuantError
from quant.ptq_static import ort_pre_process, quantize_static_onnx
from zoo.io import write_json

SENSITIVITY_IMAGES = 8  # calibration images run through both models for the per-layer SQNR


@dataclass
class LayerError:
    node: str
    op_type: str
    output: str
    sqnr_db: float          # output vs the float model's (accumulated error)
    added_noise_db: float   # input SQNR - output SQNR: the error this node's quantization adds

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "output": self.output,
                "sqnr_db": round(self.sqnr_db, 2), "added_noise_db": round(self.added_noise_db, 2)}


def _collect(model_path: Path, out_path: Path, calib: CalibrationData, input_name: str) -> dict[str, list[np.ndarray]]:
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    modify_model_output_intermediate_tensors(str(model_path), str(out_path))
    return collect_activations(str(out_path), CalibrationReader(calib, input_name))


def layer_errors(fp32_pre: str | Path, qdq: str | Path, calib: CalibrationData, *,
                 images: int = SENSITIVITY_IMAGES) -> list[LayerError]:
    """Per-node error of the QDQ model `qdq` against its pre-processed float parent `fp32_pre`,
    sorted by added noise (worst first). Only nodes whose inputs the QDQ model quantizes count."""
    from onnxruntime.quantization.qdq_loss_debug import compute_activation_error, create_activation_matching

    from quant.ptq_static import input_spec

    fp32_pre, qdq = Path(fp32_pre), Path(qdq)
    subset = CalibrationData(arrays=calib.arrays[:images], names=calib.names[:images], sha256=calib.sha256,
                             dataset=calib.dataset, split=calib.split, seed=calib.seed, input_hw=calib.input_hw,
                             preprocess=calib.preprocess, requested=images)
    float_proto = onnx.load(str(fp32_pre))
    input_name, _ = input_spec(float_proto)
    with tempfile.TemporaryDirectory(prefix="edgezoo-sens-") as tmp:
        with contextlib.redirect_stdout(sys.stderr):
            float_acts = _collect(fp32_pre, Path(tmp) / "float_aug.onnx", subset, input_name)
            qdq_acts = _collect(qdq, Path(tmp) / "qdq_aug.onnx", subset, input_name)
    matched = create_activation_matching(qdq_acts, float_acts)
    errors = compute_activation_error(matched)
    sqnr = {name: e["xmodel_err"] for name, e in errors.items() if "xmodel_err" in e}
    quantized_inputs = _quantized_consumers(onnx.load(str(qdq)))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in float_proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    out: list[LayerError] = []
    for node in float_proto.graph.node:
        if not node.name or node.name not in quantized_inputs or not node.output:
            continue
        measured = _measured_output(node.output[0], sqnr, consumers)
        if measured is None:
            continue
        ins = [sqnr[i] for i in node.input if i in sqnr]
        inherited = min(ins) if ins else float(sqnr.get(input_name, 99.0))
        out.append(LayerError(node.name, node.op_type, measured, sqnr[measured], inherited - sqnr[measured]))
    return sorted(out, key=lambda e: e.added_noise_db, reverse=True)


# Ops ORT fuses into the preceding quantized op (no Q/DQ in between), so the error of a Conv
# followed by Relu shows at the Relu's output.
_FUSED_FOLLOWERS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid"}


def _measured_output(tensor: str, sqnr: dict[str, float], consumers: dict[str, list]) -> str | None:
    for _ in range(3):
        if tensor in sqnr:
            return tensor
        nxt = consumers.get(tensor, [])
        if len(nxt) != 1 or nxt[0].op_type not in _FUSED_FOLLOWERS:
            return None
        tensor = nxt[0].output[0]
    return tensor if tensor in sqnr else None


def _quantized_consumers(qdq_proto: onnx.ModelProto) -> set[str]:
    """Names of the non-Q/DQ nodes that read a DequantizeLinear output (they run quantized)."""
    dq_outputs = {o for n in qdq_proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in qdq_proto.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)}


@dataclass
class SearchResult:
    path: Path
    kept_float: list[str]
    score: float
    fp32_score: float
    target: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)

    @property
    def retention(self) -> float:
        return self.score / self.fp32_score if self.fp32_score else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"kept_float": self.kept_float, "score": self.score, "fp32_score": self.fp32_score,
                "retention": self.retention, "target_retention": self.target, "reached": self.score >= self.target * self.fp32_score,
                "steps": self.steps, "top_layers": [e.as_dict() for e in self.layers[:20]]}


def search_mixed_precision(
    fp32_onnx: str | Path,
    out: str | Path,
    calib: CalibrationData,
    score: Callable[[Path], float],
    *,
    fp32_score: float,
    target_retention: float = 0.99,
    method: str = "entropy",
    max_float: int | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    **quant_kwargs: Any,
) -> SearchResult:
    """Static PTQ (ORT target) that keeps the fewest most-sensitive layers in float for
    ``score(int8) >= target_retention * fp32_score``; writes ``out`` (+ sidecar with the search)."""
    if not 0 < target_retention <= 1:
        raise QuantError(f"--target-retention must be in (0, 1], got {target_retention}")
    out = Path(out)
    goal = target_retention * fp32_score
    with tempfile.TemporaryDirectory(prefix="edgezoo-mixed-") as tmp_dir:
        tmp = Path(tmp_dir)
        pre, cache = tmp / "fp32_pre.onnx", tmp / "calibration.json"
        # the same pre-processing as quantize_static_onnx's ORT default, so node names match
        ort_pre_process(Path(fp32_onnx), pre, bn_as_conv=True)
        tried: dict[int, tuple[Path, float, dict]] = {}
        ranked: list[LayerError] = []

        def attempt(k: int) -> float:
            if k in tried:
                return tried[k][1]
            path = tmp / f"int8_k{k}.onnx"
            excluded = [e.node for e in ranked[:k]]
            meta = quantize_static_onnx(pre, path, calib, target="ort", method=method, nodes_to_exclude=excluded,
                                        calibration_cache=cache, pre_processed=True, **quant_kwargs)
            s = float(score(path))
            tried[k] = (path, s, meta)
            log(f"  mixed precision: {k} layer(s) in float -> score {s:.4f} (goal {goal:.4f})")
            return s

        if attempt(0) < goal:
            ranked = layer_errors(pre, tried[0][0], calib)
            limit = len(ranked) if max_float is None else min(max_float, len(ranked))
            k, low = 1, 0
            while k <= limit and attempt(k) < goal:
                low, k = k, k * 2
            if k > limit:
                k = limit
                attempt(k)
            # Bisect between the last miss and the first hit for the smallest sufficient set.
            high = k if tried[k][1] >= goal else None
            while high is not None and high - low > 1:
                mid = (low + high) // 2
                if attempt(mid) >= goal:
                    high = mid
                else:
                    low = mid
            best_k = high if high is not None else max(tried, key=lambda j: tried[j][1])
        else:
            best_k = 0
        path, best_score, meta = tried[best_k]
        shutil.copyfile(path, out.with_suffix(".tmp"))
        out.with_suffix(".tmp").replace(out)
    result = SearchResult(path=out, kept_float=[e.node for e in ranked[:best_k]], score=best_score,
                          fp32_score=fp32_score, target=target_retention,
                          steps=[{"float_layers": k, "score": v[1]} for k, v in sorted(tried.items())], layers=ranked)
    meta = {**meta, "path": str(out), "parent": {**meta["parent"], "path": str(fp32_onnx)},
            "mixed_precision": result.as_dict(), "nodes_to_exclude": meta["nodes_to_exclude"]}
    write_json(out.with_suffix(".json"), meta)
    return result


def onnx_miou(path: Path, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, num_classes: int,
              ignore_index: int, threads: int = 2) -> float:
    """mIoU of an ONNX segmentation model on pre-processed images (1xCxHxW float32) and labels (HxW)."""
    import onnxruntime as ort

    from zoo.metrics import ConfusionMatrix

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for x, y in zip(images, labels):
        cm.update(sess.run(None, {name: x})[0].argmax(1)[0], y)
    return cm.scores().miou


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quant.sensitivity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--weights", help="FP32 checkpoint (default: the cached one)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the dataset card's")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--calib-method", default="entropy", choices=["minmax", "percentile", "entropy"])
    p.add_argument("--target-retention", type=float, help="also search the mixed-precision model for this fraction of FP32 mIoU")
    p.add_argument("--max-images", type=int, help="score on the first N validation images (default: all)")
    p.add_argument("--top", type=int, default=20, help="layers to print")
    p.add_argument("--out", default="artifacts/sensitivity", help="folder for the report JSON and the INT8 model")
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    from zoo.errors import user_errors

    args = build_parser().parse_args(argv)
    with user_errors():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    import pandas as pd

    from quant.calibrate import build_calibration
    from quant.export import export_onnx
    from zoo import data as zdata
    from zoo.api import load_fp32

    card = zdata.load_card(args.data)
    hw = tuple(args.input_size or card.input_size)
    loaded = load_fp32(args.model, dataset=args.data, weights=args.weights, data_root=args.data_root,
                       train_if_missing=False)
    pre = zdata.Preprocess.from_dict(loaded.preprocess) if loaded.preprocess else zdata.Preprocess.from_card(card)
    out_dir = Path(args.out) / loaded.model.__class__.__name__.lower()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / f"fp32_{hw[0]}x{hw[1]}.onnx"
    export_onnx(loaded.model.eval(), fp32, input_hw=hw)
    calib = build_calibration(args.data, root=args.data_root, split="train", num_images=args.calib_images,
                              preprocess=pre, input_hw=hw)
    val = zdata.build_dataset(args.data, root=args.data_root, split="val", transform=zdata.EvalTransform(pre, size=hw))
    n = min(len(val), args.max_images or len(val))
    samples = [val[i] for i in range(n)]
    images = [s[0].numpy()[None] for s in samples]
    labels = [s[1].numpy() for s in samples]

    def score(path: Path) -> float:
        return onnx_miou(path, images, labels, num_classes=card.num_classes, ignore_index=card.ignore_index,
                         threads=args.threads)

    fp32_score = score(fp32)
    print(f"FP32 mIoU {100 * fp32_score:.2f} on {n} {args.data}/val images", file=sys.stderr)
    int8 = out_dir / f"static_mixed_{hw[0]}x{hw[1]}.onnx"
    # Without a target every layer stays INT8 and the run only ranks them.
    target = args.target_retention if args.target_retention else 1e-9
    result = search_mixed_precision(fp32, int8, calib, score, fp32_score=fp32_score, target_retention=target,
                                    method=args.calib_method)
    layers = result.layers
    if not layers:  # the all-INT8 model met the goal; rank its layers anyway for the report
        with tempfile.TemporaryDirectory() as tmp:
            pre_path = Path(tmp) / "pre.onnx"
            ort_pre_process(fp32, pre_path, bn_as_conv=True)
            layers = layer_errors(pre_path, int8, calib)
    print(pd.DataFrame([e.as_dict() for e in layers[:args.top]]).to_markdown(index=False))
    print(f"\nINT8 mIoU {100 * result.score:.2f} ({100 * result.retention:.1f}% of FP32) with "
          f"{len(result.kept_float)} layer(s) in float: {', '.join(result.kept_float) or '-'}")
    write_json(out_dir / "sensitivity.json", {**result.as_dict(), "top_layers": [e.as_dict() for e in layers]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
