"""Per-layer quantization sensitivity and mixed precision for static PTQ (ONNX Runtime QDQ).

1. **Per-layer error.** ONNX Runtime's `qdq_loss_debug` runs the float and the QDQ model with every
   intermediate tensor exposed and matches them by name. For each quantized node we take the SQNR
   (dB) of its output against the float model's, and the *noise it adds*: the SQNR of its inputs
   minus the SQNR of its output. Ranking by added noise points at the layers whose own
   quantization hurts, not at the late layers that merely inherit earlier error.
2. **Mixed precision.** `search_mixed_precision` quantizes everything and scores the result on
   held-out images. Below ``target_retention`` x FP32 it searches two ways: (a) whole *families*
   of non-compute layers (every Add, every Concat, every BatchNorm, ...; greedy forward
   selection), which fixes noise that accumulates along a path while every convolution stays
   INT8; (b) the 1, 2, 4, 8 ... most noise-adding single layers (fewer than (a) needed), then a
   bisection back to the smallest such set. Of the sets that reach the goal it keeps the cheapest:
   the fewest weight parameters left in float (a float convolution costs file size and INT8
   compute, a float Add or BatchNorm neither), then the fewest float layers.
   Calibration runs once: ORT's calibration cache holds the ranges for every re-quantization.
   The artifact lists the layers kept in float and every set tried.

The score follows the task of the model (zoo.registry): mIoU for segmentation; COCO mAP50-95 for
detection (pycocotools via `zoo.evaluate.evaluate_detector`: square letterbox at the fixed input
size, the decode inside the model, NMS with torchvision's batched_nms at the "map" preset, conf
0.001 / IoU 0.65). The report and the summary name the metric.

Which images (``--search-on``):
  train-holdout  (default) calibration and search both come from the *training* split, disjoint:
                 a seeded permutation of its files (sorted by name) is cut into a calibration part
                 (at most --calib-images) and a held-out part (--holdout-fraction of the split,
                 at most --max-images) that the search scores. The validation split, which
                 reports use (bench.run), stays unseen, so its numbers are not fitted to it.
  val            the old behaviour: calibrate on a seeded subset of the training split (the rule
                 of quant.calibrate.build_calibration), score the search on the validation split.
                 The chosen float layers are then tuned on the images reported later.
Both lists of image names, with the calibration hash, go into the report and the INT8 sidecar.

Use the result in a benchmark: `python -m bench.run ... --quant static --keep-float-from
artifacts/sensitivity/<model>/sensitivity.json` quantizes with the same layers kept in float (the
bench's own calibration set; the list is part of the cell key and the record).

    python -m quant.sensitivity --model ddrnet --data camvid --data-root ../shared/data/camvid --top 15
    python -m quant.sensitivity --model yolov5n --data coco --data-root ../shared/data/coco-tiny \\
        --weights ../shared/weights/yolov5n.pt --target-retention 0.97 --top 15
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from quant.calibrate import CalibrationData, CalibrationReader, QuantError, resolve_calib_method
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
    if not any(o.endswith("_DequantizeLinear_Output") for n in onnx.load(str(qdq)).graph.node for o in n.output):
        raise QuantError(f"{qdq} has no ONNX Runtime Q/DQ tensor names to match layers on; quantize it with "
                         "quantize_static_onnx(..., compact_names=False)")
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


# Compute layers that the family stage leaves INT8: mixed precision by families keeps the
# arithmetic in INT8 and moves only the glue between it to float.
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
BN_AS_CONV_SUFFIX = "_as_dwconv"  # quant.ptq_static's BatchNormalization -> depthwise Conv rewrite


def layer_families(fp32_pre: str | Path, qdq: str | Path) -> dict[str, list[str]]:
    """The quantized nodes of `qdq` grouped by kind, compute layers (Conv, Gemm, MatMul) left out:
    one family per op type, and BatchNorms rewritten as depthwise convolutions as "BatchNorm"."""
    quantized = _quantized_consumers(onnx.load(str(qdq)))
    families: dict[str, list[str]] = {}
    for node in onnx.load(str(fp32_pre)).graph.node:
        if node.name not in quantized:
            continue
        kind = "BatchNorm" if node.name.endswith(BN_AS_CONV_SUFFIX) else node.op_type
        if kind in _COMPUTE_OPS:
            continue
        families.setdefault(kind, []).append(node.name)
    return families


def float_weight_params(fp32_pre: str | Path | onnx.ModelProto, nodes: Sequence[str]) -> int:
    """Weight parameters (initializers of rank >= 2: conv kernels, matrices) that stay float when
    `nodes` are kept out of quantization: what a float layer costs in file size and INT8 compute.
    A BatchNorm rewritten as a depthwise conv counts its one weight per channel."""
    proto = fp32_pre if isinstance(fp32_pre, onnx.ModelProto) else onnx.load(str(fp32_pre))
    sizes = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer if len(t.dims) >= 2}
    wanted = set(nodes)
    return sum(sizes.get(i, 0) for node in proto.graph.node if node.name in wanted for i in node.input)


def _search_families(families: dict[str, list[str]], attempt_nodes: Callable[[Sequence[str], str], float],
                     goal: float, limit: int | None) -> list[str] | None:
    """Greedy forward selection of whole families: add the family that scores best with those
    already chosen, until the goal is met (return the node list) or none is left (None)."""
    chosen: list[str] = []
    while True:
        trials = {}
        for fam in families:
            if fam in chosen:
                continue
            nodes = [n for f in chosen + [fam] for n in families[f]]
            if limit is not None and len(nodes) > limit:
                continue
            trials[fam] = (attempt_nodes(nodes, "families " + " + ".join(chosen + [fam])), nodes)
        if not trials:
            return None
        fam = max(trials, key=lambda f: trials[f][0])
        chosen.append(fam)
        if trials[fam][0] >= goal:
            return trials[fam][1]


@dataclass
class SearchResult:
    path: Path
    kept_float: list[str]
    score: float
    fp32_score: float
    target: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)
    metric: str = "score"   # what `score` measures: "miou", "map50_95", ...

    @property
    def retention(self) -> float:
        return self.score / self.fp32_score if self.fp32_score else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "kept_float": self.kept_float, "score": self.score,
                "fp32_score": self.fp32_score,
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
    metric: str = "score",
    record: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    **quant_kwargs: Any,
) -> SearchResult:
    """Static PTQ (ORT target) that keeps the cheapest set of sensitive layers in float (fewest
    float weights, then fewest layers) for ``score(int8) >= target_retention * fp32_score``;
    writes ``out`` (+ sidecar with the search).

    ``score`` should look at images other than ``calib``'s (see the module docstring); ``metric``
    names what it measures and ``record`` (e.g. which images calibrated and which scored) is
    stored in the sidecar's ``mixed_precision`` entry."""
    if not 0 < target_retention <= 1:
        raise QuantError(f"--target-retention must be in (0, 1], got {target_retention}")
    out = Path(out)
    goal = target_retention * fp32_score
    with tempfile.TemporaryDirectory(prefix="edgezoo-mixed-") as tmp_dir:
        tmp = Path(tmp_dir)
        pre, cache = tmp / "fp32_pre.onnx", tmp / "calibration.json"
        # the same pre-processing as quantize_static_onnx's ORT default, so node names match
        ort_pre_process(Path(fp32_onnx), pre, bn_as_conv=True)
        tried: dict[tuple[str, ...], tuple[Path, float, dict, str]] = {}
        ranked: list[LayerError] = []

        def attempt_nodes(nodes: Sequence[str], how: str) -> float:
            key = tuple(nodes)
            if key in tried:
                return tried[key][1]
            path = tmp / f"int8_{len(tried)}.onnx"
            meta = quantize_static_onnx(pre, path, calib, target="ort", method=method, nodes_to_exclude=list(key),
                                        calibration_cache=cache, pre_processed=True,
                                        # layer_errors matches ORT's Q/DQ tensor names
                                        compact_names=False, **quant_kwargs)
            s = float(score(path))
            tried[key] = (path, s, meta, how)
            log(f"  mixed precision: {len(key)} layer(s) in float ({how}) -> {metric} {s:.4f} (goal {goal:.4f})")
            return s

        def attempt(k: int) -> float:
            return attempt_nodes([e.node for e in ranked[:k]], f"the {k} most noise-adding" if k else "all INT8")

        if attempt(0) < goal:
            # Stage 1: whole kinds of layer. Noise that accumulates along a path (ESPNet: the
            # running sums, concatenations and BatchNorms of its ESP modules) is spread over
            # many layers that each add little, so no short per-layer list fixes it.
            families = layer_families(pre, tried[()][0])
            family_hit = _search_families(families, attempt_nodes, goal, max_float)
            # Stage 2: the most noise-adding single layers, 1, 2, 4, ... of them (fewer than the
            # family set needs, when that reached the goal), then bisect.
            ranked = layer_errors(pre, tried[()][0], calib)
            limit = len(ranked) if max_float is None else min(max_float, len(ranked))
            if family_hit is not None:
                limit = min(limit, len(family_hit) - 1)
            k, low = 1, 0
            while k <= limit and attempt(k) < goal:
                low, k = k, k * 2
            if limit >= 1 and k > limit:
                k = limit
                attempt(k)
            # Bisect between the last miss and the first hit for the smallest sufficient set.
            high = k if limit >= 1 and attempt(k) >= goal else None
            while high is not None and high - low > 1:
                mid = (low + high) // 2
                if attempt(mid) >= goal:
                    high = mid
                else:
                    low = mid
        # The cheapest set that reaches the goal: the fewest float weights (convolutions left in
        # float cost size and INT8 compute; a float Add or BatchNorm costs neither), then the
        # fewest float layers, then the better score; none reached it: the best score.
        pre_proto = onnx.load(str(pre))
        float_weights = {key: float_weight_params(pre_proto, key) for key in tried}
        hits = [key for key, v in tried.items() if v[1] >= goal]
        best = (min(hits, key=lambda key: (float_weights[key], len(key), -tried[key][1])) if hits
                else max(tried, key=lambda key: tried[key][1]))
        path, best_score, meta, _how = tried[best]
        shutil.copyfile(path, out.with_suffix(".tmp"))
        out.with_suffix(".tmp").replace(out)
    result = SearchResult(path=out, kept_float=list(best), score=best_score,
                          fp32_score=fp32_score, target=target_retention,
                          steps=[{"float_layers": len(key), "float_weight_params": float_weights[key], "how": v[3],
                                  "score": v[1]} for key, v in tried.items()],
                          layers=ranked, metric=metric)
    meta = {**meta, "path": str(out), "parent": {**meta["parent"], "path": str(fp32_onnx)},
            "mixed_precision": {**result.as_dict(), **(record or {})}, "nodes_to_exclude": meta["nodes_to_exclude"]}
    write_json(out.with_suffix(".json"), meta)
    return result


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_miou(path: Path, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, num_classes: int,
              ignore_index: int, threads: int = 2) -> float:
    """mIoU of an ONNX segmentation model on pre-processed images (1xCxHxW float32) and labels (HxW)."""
    from zoo.metrics import ConfusionMatrix

    sess = _ort_session(path, threads)
    name = sess.get_inputs()[0].name
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for x, y in zip(images, labels):
        cm.update(sess.run(None, {name: x})[0].argmax(1)[0], y)
    return cm.scores().miou


class _OrtDetector:
    """An ONNX detector (decode inside: (1, N, 5 + nc) out) in the shape `zoo.evaluate.evaluate_detector`
    expects of a torch model: ``eval()`` and a call on a (1, 3, H, W) tensor."""

    def __init__(self, path: Path, threads: int) -> None:
        self.sess = _ort_session(path, threads)
        self.name = self.sess.get_inputs()[0].name

    def eval(self) -> "_OrtDetector":
        return self

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.sess.run(None, {self.name: x.numpy()})[0])


def onnx_map(path: Path, dataset, *, threads: int = 2) -> float:
    """COCO mAP50-95 of an ONNX detector on a `zoo.data` detection dataset whose transform is a square
    `DetEvalTransform`, scored as `zoo.evaluate` does (pycocotools on the dataset's image ids, NMS
    preset "map": conf 0.001, IoU 0.65, multi-label, torchvision batched_nms)."""
    import torch

    from zoo.det.postprocess import MAP_NMS
    from zoo.evaluate import evaluate_detector

    # NMS gains nothing from threads and torch's pool would compete with ORT's on the same cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "no detections to evaluate: mAP is 0"
            scores, _ = evaluate_detector(_OrtDetector(path, threads), dataset, nms=MAP_NMS, progress=False)
    finally:
        torch.set_num_threads(before)
    return float(scores.map)


def _read_report(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QuantError(f"cannot read the sensitivity report '{path}': {exc}; pass the sensitivity.json "
                         "that python -m quant.sensitivity wrote") from None
    if not isinstance(data, dict):
        raise QuantError(f"'{path}' is not a sensitivity report (a JSON object); pass the sensitivity.json "
                         "that python -m quant.sensitivity wrote")
    return data


def kept_float_from(path: str | Path) -> list[str]:
    """The layers a sensitivity run kept in float, from its report (``sensitivity.json``) or from the
    INT8 artifact's sidecar (``mixed_precision.kept_float``); what `bench.run --keep-float-from` reads."""
    path = Path(path)
    data = _read_report(path)
    kept = data.get("kept_float", (data.get("mixed_precision") or {}).get("kept_float"))
    if not isinstance(kept, list) or not all(isinstance(n, str) for n in kept):
        raise QuantError(f"'{path}' has no kept_float list of node names; pass the sensitivity.json (or the INT8 "
                         "model's .json sidecar) that python -m quant.sensitivity wrote")
    return list(kept)


def searched_calib_method(path: str | Path) -> str | None:
    """The calibration method a sensitivity run searched with (the report's ``calib_method``, or the
    INT8 sidecar's ``method``); None for a report that does not say. The float list is only valid
    for that method: another calibration has other per-layer errors."""
    data = _read_report(Path(path))
    method = data.get("calib_method", data.get("method") if "mixed_precision" in data else None)
    return str(method).lower() if method else None


# --- which images calibrate and which score -------------------------------------------------

SEARCH_ON = ("train-holdout", "val")
HOLDOUT_FRACTION = 0.4


def _file_key(ds, i: int) -> str:
    f = ds.files[i]
    return str(f[0] if isinstance(f, (tuple, list)) else f)


def split_train(ds, *, calib_images: int, holdout_fraction: float, max_images: int | None,
                seed: int) -> tuple[list[int], list[int]]:
    """(calibration indices, held-out indices) of a training split, disjoint and reproducible.

    The split's files are sorted by name, permuted with ``numpy.random.default_rng(seed)``; the last
    ``round(holdout_fraction * n)`` of the permutation are held out (at most ``max_images`` of them
    scored), the first ``min(calib_images, rest)`` calibrate. Both lists come back sorted.
    With ``holdout_fraction`` 0 nothing is held out and the calibration follows
    `quant.calibrate.build_calibration`'s rule instead (the same images as bench.run's static PTQ).
    """
    from quant.calibrate import MIN_IMAGES

    order = sorted(range(len(ds)), key=lambda i: _file_key(ds, i))
    n = len(order)
    if holdout_fraction <= 0:
        if n < min(calib_images, MIN_IMAGES):
            raise QuantError(f"the training split has {n} images, fewer than the minimum {MIN_IMAGES} to calibrate; "
                             "add training images or lower --calib-images")
        if n <= calib_images:
            return list(order), []
        picks = np.random.default_rng(seed).choice(n, size=calib_images, replace=False)
        return [order[i] for i in sorted(int(p) for p in picks)], []
    if not 0 < holdout_fraction < 1:
        raise QuantError(f"--holdout-fraction must be in [0, 1), got {holdout_fraction}")
    held = int(round(holdout_fraction * n))
    if held < 1 or n - held < MIN_IMAGES:
        raise QuantError(f"the training split has {n} images: holding out {held} leaves {n - held} to calibrate "
                         f"(minimum {MIN_IMAGES}) and needs at least 1 to score; add training images, change "
                         "--holdout-fraction, or pass --search-on val")
    perm = np.random.default_rng(seed).permutation(n)
    calib = sorted(order[int(p)] for p in perm[:min(calib_images, n - held)])
    score = sorted(order[int(p)] for p in perm[n - held:])
    return calib, score[:max_images] if max_images else score


def subset_calibration(ds, indices: Sequence[int], to_array: Callable[[Any], np.ndarray], *, dataset: str,
                       seed: int, input_hw: tuple[int, int], preprocess: dict[str, Any],
                       requested: int) -> CalibrationData:
    """`CalibrationData` of ``ds``'s ``indices`` (train split), each sample made an NCHW batch of one by
    ``to_array``; hashed like `quant.calibrate.build_calibration`'s sets."""
    from quant.calibrate import _hash

    arrays, names = [], []
    for i in indices:
        sample = ds.load(i)
        arrays.append(np.ascontiguousarray(to_array(sample), dtype=np.float32))
        names.append(sample.name)
    digest = _hash(dataset, "train", names, preprocess, input_hw, int(seed), arrays)
    return CalibrationData(arrays=arrays, names=names, sha256=digest, dataset=dataset, split="train",
                           seed=int(seed), input_hw=tuple(input_hw), preprocess=preprocess, requested=int(requested))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quant.sensitivity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--weights", help="FP32 checkpoint (default: the cached one)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="default: the dataset card's (detection: its long side rounded up to the stride, as a square)")
    p.add_argument("--calib-images", type=int, default=256, help="at most this many calibration images (train split)")
    p.add_argument("--calib-method", default=None, choices=["minmax", "percentile", "entropy"],
                   help="static PTQ calibration (default: the task's, as in python -m bench.run: percentile for "
                        "detection and segmentation on ONNX Runtime)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the image selection (default 0)")
    p.add_argument("--search-on", choices=SEARCH_ON, default="train-holdout",
                   help="images the search scores: train-holdout (default: a held-out part of the training "
                        "split, disjoint from the calibration images; the validation split stays unseen) or val "
                        "(the validation split, which reports use: the float layers are then fitted to it)")
    p.add_argument("--holdout-fraction", type=float, default=HOLDOUT_FRACTION,
                   help=f"train-holdout: fraction of the training split held out for scoring (default {HOLDOUT_FRACTION}; "
                        "coco-tiny: 32 of 80, the other 48 calibrate)")
    p.add_argument("--target-retention", type=float,
                   help="also search the mixed-precision model for this fraction of the FP32 score "
                        "(mIoU for segmentation, COCO mAP50-95 for detection)")
    p.add_argument("--max-float", type=int,
                   help="keep at most N layers in float; when the target is not reached by then, the best model tried wins")
    p.add_argument("--max-images", type=int, help="score on at most N images (default: all held-out / validation images)")
    p.add_argument("--top", type=int, default=20, help="layers to print")
    p.add_argument("--out", default="artifacts/sensitivity", help="folder for the report JSON and the INT8 model")
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    from zoo.errors import user_errors

    args = build_parser().parse_args(argv)
    with user_errors():
        return _main(args)


@dataclass
class _Task:
    """What the search needs of the task: the metric, the input size, how a sample becomes a network
    input, and how a model is scored on a set of images."""

    name: str                                   # "segmentation" | "detection"
    metric: str                                 # "miou" | "map50_95"
    hw: tuple[int, int]
    preprocess: dict[str, Any]                  # as recorded with the calibration
    to_array: Callable[[Any], np.ndarray]       # dataset sample -> 1xCxHxW float32
    scorer: Callable[[Any, list[int]], Callable[[Path], float]]  # (dataset, indices) -> score(path)


def _task(args: argparse.Namespace, card, entry, pre) -> _Task:
    from zoo import data as zdata

    if entry.task == "detection":
        if card.task != "detection":
            raise QuantError(f"{entry.name} is a detector but dataset {card.name!r} is for {card.task}; "
                             "pick a detection dataset (coco, synthetic-det)")
        from zoo.data.letterbox import RESIZE_BACKEND, DetEvalTransform

        side = int(np.ceil(max(card.input_size) / 32) * 32)
        if args.input_size:
            h, w = args.input_size
            if h != w or h % 32:
                raise QuantError(f"detectors are quantized at a square input whose side is a multiple of 32 "
                                 f"(the stride), got {h}x{w}; pass e.g. --input-size {side} {side}")
            side = h
        transform = DetEvalTransform(pre, side, rect=False)

        def scorer(ds, indices: list[int]) -> Callable[[Path], float]:
            sub = copy.copy(ds)
            sub.images = [ds.images[i] for i in indices]
            sub.transform = transform
            return lambda path: onnx_map(path, sub, threads=args.threads)

        return _Task("detection", "map50_95", (side, side),
                     {**pre.to_dict(), "letterbox": f"square {side}x{side}, grey 114, {RESIZE_BACKEND} (zoo.data.letterbox)"},
                     lambda sample: transform(sample)[0].numpy()[None], scorer)
    # Everything else is scored like segmentation: mIoU of the arg-max of the first output.
    hw = tuple(args.input_size or card.input_size)
    transform = zdata.EvalTransform(pre, size=hw)

    def seg_scorer(ds, indices: list[int]) -> Callable[[Path], float]:
        samples = [transform(ds.load(i)) for i in indices]
        images = [x.numpy()[None] for x, _ in samples]
        labels = [y.numpy() for _, y in samples]
        return lambda path: onnx_miou(path, images, labels, num_classes=card.num_classes,
                                      ignore_index=card.ignore_index, threads=args.threads)

    return _Task("segmentation", "miou", (int(hw[0]), int(hw[1])), pre.to_dict(),
                 lambda sample: transform(sample)[0].numpy()[None], seg_scorer)


def _main(args: argparse.Namespace) -> int:
    import pandas as pd

    from quant.export import export_onnx
    from zoo import data as zdata
    from zoo.api import load_fp32
    from zoo.registry import get_entry

    card = zdata.load_card(args.data)
    entry = get_entry(args.model)
    loaded = load_fp32(args.model, dataset=args.data, weights=args.weights, data_root=args.data_root,
                       train_if_missing=False)
    pre = zdata.Preprocess.from_dict(loaded.preprocess) if loaded.preprocess else zdata.Preprocess.from_card(card)
    task = _task(args, card, entry, pre)
    hw = task.hw
    method = resolve_calib_method(args.calib_method, task.name)

    train = zdata.build_dataset(args.data, root=args.data_root, split="train")
    holdout = args.holdout_fraction if args.search_on == "train-holdout" else 0.0
    calib_idx, score_idx = split_train(train, calib_images=args.calib_images, holdout_fraction=holdout,
                                       max_images=args.max_images, seed=args.calib_seed)
    calib = subset_calibration(train, calib_idx, task.to_array, dataset=args.data, seed=args.calib_seed,
                               input_hw=hw, preprocess=task.preprocess, requested=args.calib_images)
    if args.search_on == "val":
        score_ds = zdata.build_dataset(args.data, root=args.data_root, split="val")
        score_idx = list(range(min(len(score_ds), args.max_images or len(score_ds))))
        score_split = "val"
    else:
        score_ds, score_split = train, "train"
    score = task.scorer(score_ds, score_idx)
    images_record = {
        "search_on": args.search_on, "seed": args.calib_seed,
        "holdout_fraction": holdout if args.search_on == "train-holdout" else None,
        "calibration": {"split": "train", "sha256": calib.sha256, "count": calib.size, "names": list(calib.names)},
        "search": {"split": score_split, "count": len(score_idx),
                   "names": [Path(_file_key(score_ds, i)).stem for i in score_idx]},
    }
    overlap = set(images_record["calibration"]["names"]) & set(images_record["search"]["names"])
    if score_split == "train" and overlap:  # cannot happen with split_train; a guard for future edits
        raise QuantError(f"{len(overlap)} image(s) both calibrate and score the search")

    out_dir = Path(args.out) / loaded.model.__class__.__name__.lower()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / f"fp32_{hw[0]}x{hw[1]}.onnx"
    export_onnx(loaded.model.eval(), fp32, input_hw=hw)
    where = f"{len(score_idx)} {args.data}/{score_split} images" + (
        f" held out from the {calib.size} calibration images" if score_split == "train" else "")
    fp32_score = score(fp32)
    print(f"FP32 {task.metric} {100 * fp32_score:.2f} on {where}", file=sys.stderr)
    int8 = out_dir / f"static_mixed_{hw[0]}x{hw[1]}.onnx"
    # Without a target every layer stays INT8 and the run only ranks them.
    target = args.target_retention if args.target_retention else 1e-9
    record = {"task": task.name, "model": entry.name, "dataset": args.data, "input_hw": list(hw),
              "weights": str(loaded.path), "weights_sha256": loaded.sha256, "images": images_record}
    result = search_mixed_precision(fp32, int8, calib, score, fp32_score=fp32_score, target_retention=target,
                                    method=method, max_float=args.max_float, metric=task.metric,
                                    record=record)
    layers = result.layers
    if not layers:  # the all-INT8 model met the goal; rank its layers anyway for the report
        with tempfile.TemporaryDirectory() as tmp:
            pre_path = Path(tmp) / "pre.onnx"
            ort_pre_process(fp32, pre_path, bn_as_conv=True)
            layers = layer_errors(pre_path, int8, calib)
    print(pd.DataFrame([e.as_dict() for e in layers[:args.top]]).to_markdown(index=False))
    all_int8 = next((s["score"] for s in result.steps if s["float_layers"] == 0), float("nan"))
    print(f"\n{task.metric} on {where} ({method} calibration): FP32 {100 * fp32_score:.2f}, "
          f"all INT8 {100 * all_int8:.2f} ({100 * all_int8 / fp32_score if fp32_score else float('nan'):.1f}%), "
          f"mixed precision {100 * result.score:.2f} ({100 * result.retention:.1f}% of FP32) with "
          f"{len(result.kept_float)} layer(s) in float: {', '.join(result.kept_float) or '-'}")
    report = {**result.as_dict(), **record, "calib_method": method, "int8_path": str(int8),
              "fp32_path": str(fp32), "all_int8_score": all_int8, "top_layers": [e.as_dict() for e in layers]}
    write_json(out_dir / "sensitivity.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
