"""Plan a sweep, prepare artifacts in the parent, run each cell in its own process.

Preparation happens here, once, and is cached in the artifact folder:

* the FP32 weights (found, trained with the quick recipe, or random with a fixed seed) and, per
  (input size, batch), the exported ONNX;
* the evaluation set: the split's image paths and its labels at the input size, as an .npz that
  the cell reads with numpy alone (the labels come through `zoo.data`, so every dataset's label
  mapping and validation stays in one place);
* the PyTorch FP32 reference: one `torch` run per (weights, dataset, split, input size) in its
  own process, saving its argmax masks; every cell compares its masks with them
  (`metrics.pixel_agreement`) and its mIoU with the reference's (`metrics.miou_delta_vs_fp32_torch`).

Detection datasets (issue #7) follow the same plan with task-specific pieces, each explained
where it is made:

* one fixed, square input size per cell (engines and static ONNX exports are built for one
  shape): the card's long side rounded up to the stride, 640x640 for COCO, unless
  `--input-size`; images are letterboxed to it (`bench.imageops.letterbox`). The reference
  protocol of `zoo.evaluate` letterboxes each image to its own "rect" shape instead, so a cell's
  mAP differs slightly from `python -m zoo.evaluate`; each record states its `protocol`;
* the evaluation set is the image list, their COCO image ids and a COCO-format ground-truth json;
* the cell writes its detections (NMS presets "map" and "deploy") and the parent scores them:
  `metrics.map50_95` / `metrics.map50` with pycocotools (`zoo.det.coco_eval`), and
  `metrics.box_agreement` against the PyTorch FP32 reference's deploy-preset boxes
  (`bench.metrics.BoxAgreement`), so neither pycocotools nor the ground truth sits in the
  measured process;
* static INT8 keeps the Detect head's three 1x1 convolutions and the whole decode subgraph after
  them (sigmoid, grid and anchor arithmetic, concat) in float (see `Prepared.variant_artifact`).

Each cell process only loads and measures. A crash, a timeout or a missing backend becomes a
record (`status` skipped/failed with the reason) and the sweep goes on; every record is written
(atomically) as soon as its cell ends, so a sweep killed at any point loses no finished cell, and
a rerun skips the cells already stored with status ok (see `cell_key`) unless `force`.

Test hooks (environment): EDGEZOO_BENCH_KILL_AFTER=N SIGKILLs the sweep right after its N-th
record; EDGEZOO_BENCH_KILL_IN_WRITE=N SIGKILLs it half-way through writing its N-th record;
EDGEZOO_BENCH_FAULT makes cells crash or hang (bench/cell.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from zoo.io import atomic_path, write_json
from bench.backends import BACKENDS, device_of, get_backend, precision_of
from bench.env import REPO, environment
from bench.results import (SCHEMA, cell_key, latest_by_key, now_iso, read_records, short_id,
                           stale_temporaries, write_record)
from bench.timing import DEFAULT_CV_THRESHOLD, PROFILES, is_unstable, profile_id, resolve_profile
from zoo.api import VARIANTS, load_fp32
from zoo.checkpoints import artifacts_dir
from zoo.errors import UsageError
from zoo.instances.postprocess import GroupConfig
from zoo.io import sha256_file
from zoo.profile import count_gmacs, count_params
from zoo.registry import get_entry, list_models

IMPLEMENTED_VARIANTS = ("fp32", "qat", "static", "dynamic")
# Backends that consume the TensorRT flavour of a static QDQ model (symmetric INT8, Q/DQ on inputs).
TRT_TARGET_BACKENDS = ("tensorrt", "onnxruntime-trt")


def variant_support(variant: str, backend_cls: type, cfg: "BenchConfig | None" = None) -> tuple[bool, str]:
    """Whether `backend` can run `variant`; the reason becomes the skipped cell's error."""
    if variant in ("static", "qat") and backend_cls.artifact_kind == "torch" and backend_cls.device != "cpu":
        return False, ("PyTorch's INT8 kernels (fbgemm / x86, FX graph mode) run on the CPU only; "
                       "measure INT8 on a GPU with tensorrt or onnxruntime-trt")
    if variant == "qat" and cfg is not None and cfg.weights == "random":
        return False, "QAT fine-tunes trained FP32 weights; --weights random has none (use a checkpoint)"
    # Detection takes the same paths: YOLOv5's box decode is an FX leaf (zoo.det.yolov5.BoxDecode)
    # that stays float in the INT8 graph and the QDQ ONNX, and quant.qat fine-tunes detectors
    # through zoo.det.train.
    return True, ""


def _task(cfg: "BenchConfig") -> str:
    """The dataset card's task, or "instance" when the sweep names instance networks (they run
    on segmentation data with instance ids; `bench.instances`)."""
    from zoo.data import load_card

    from bench.instances import is_instance_model

    if any(is_instance_model(m) for t in cfg.models for m in str(t).split(",")):
        return "instance"
    return load_card(cfg.data).task


# Detectors need input sides that are multiples of their largest stride (YOLOv5: 32).
DET_STRIDE = 32


def default_sizes(cfg: "BenchConfig", card) -> list[tuple[int, int]]:
    """The sizes a sweep measures. Detection: one fixed square per cell, the card's long side
    rounded up to the stride (640x640 for COCO, 480x480 for synthetic-det), because ONNX exports
    and TensorRT engines are built for one shape; images are letterboxed into it."""
    if card.task == "detection" and cfg.input_hw is None:
        side = int(math.ceil(max(card.input_size) / DET_STRIDE) * DET_STRIDE)
        return [(side, side)]
    return cfg.sizes(card.input_size)


def quant_config(cfg: "BenchConfig", variant: str, backend: str) -> str:
    """What, besides the FP32 weights, determines a quantized artifact (part of the cell key).

    For QAT the fine-tuned checkpoint itself is the identity: it is added to the key once known
    (`Prepared.qat_checkpoint`), so a new fine-tuning never reuses an old cell.
    """
    target = "trt" if backend in TRT_TARGET_BACKENDS else "ort"
    torch_backend = get_backend(backend).artifact_kind == "torch"
    if variant == "static":
        method = calib_method_of(cfg, "torch" if torch_backend else "onnx")
        if torch_backend:  # FX PTQ: the method's observers (quant.fx_quant.activation_observer)
            return f"fx-{method}-{cfg.calib_images}img-seed{cfg.calib_seed}"
        # "bnconv": the ORT artifact runs stand-alone BNs as INT8 depthwise convs (quant.onnx_rewrites);
        # part of the key so artifacts made before that rewrite are not reused.
        rewrite = "-bnconv" if target == "ort" else ""
        return f"{target}{rewrite}-{method}-{cfg.calib_images}img-seed{cfg.calib_seed}{keep_float_tag(cfg)}"
    if variant == "qat":
        return "fx-int8" if torch_backend else f"qdq-{target}"
    return ""


def qat_command(cfg: "BenchConfig", model: str, weights: str | Path, resume: bool) -> list[str]:
    """The `python -m quant.qat` command that fine-tunes the QAT checkpoint a sweep needs.

    It runs as a child process rather than in the sweep's own: quant.qat restarts itself under
    TCMalloc (zoo.hardware: ~20 % faster training steps), which a sweep cannot do once torch is
    loaded, and the fine-tuning's memory goes back to the system before the cells run."""
    cmd = [sys.executable, "-m", "quant.qat", "--model", model, "--data", cfg.data, "--weights", str(weights)]
    if cfg.data_root is not None:
        cmd += ["--data-root", str(cfg.data_root)]
    if cfg.qat_epochs is not None:
        cmd += ["--epochs", str(cfg.qat_epochs)]
    if cfg.artifacts is not None:
        cmd += ["--artifacts", str(cfg.artifacts)]
    if cfg.threads is not None:
        cmd += ["--threads", str(cfg.threads)]
    if not cfg.progress:
        cmd += ["--no-progress"]
    return cmd + (["--resume"] if resume else [])


def calib_method_of(cfg: "BenchConfig", runtime: str = "onnx") -> str:
    """The static-PTQ calibration method of a sweep's cells on `runtime` ("onnx": ORT / TensorRT QDQ
    artifacts; "torch": FX observers): `cfg.calib_method`, or the task's default for that runtime
    when unset (`quant.calibrate.resolve_calib_method`: percentile for detection on ONNX, entropy
    otherwise)."""
    from quant.calibrate import resolve_calib_method

    if cfg.calib_method is not None:
        return resolve_calib_method(cfg.calib_method, "")
    return resolve_calib_method(None, _task(cfg), runtime)


def calib_runtime(backend: str) -> str:
    """Which calibrator a backend's static artifact uses: "torch" (FX observers) or "onnx"."""
    return "torch" if get_backend(backend).artifact_kind == "torch" else "onnx"


def keep_float_tag(cfg: "BenchConfig") -> str:
    """Static ONNX artifacts with `keep_float` nodes left unquantized (--keep-float-from, a
    mixed-precision list from python -m quant.sensitivity): "-float<count>-<hash of the names>"."""
    if not cfg.keep_float:
        return ""
    digest = hashlib.sha256(json.dumps(sorted(cfg.keep_float)).encode()).hexdigest()
    return f"-float{len(cfg.keep_float)}-{digest[:8]}"


REFERENCE_MIN_TIMEOUT = 600.0
KILL_AFTER_ENV = "EDGEZOO_BENCH_KILL_AFTER"
KILL_IN_WRITE_ENV = "EDGEZOO_BENCH_KILL_IN_WRITE"


@dataclass
class BenchConfig:
    """Everything a sweep needs; `python -m bench.run` fills it from its arguments.

    `input_hw` is one (H, W), a list of them, or None for the dataset card's size; `batch` is one
    int or a list. `backends`, `variants` and `models` accept "all".
    """

    models: list[str]
    variants: list[str] = field(default_factory=lambda: ["fp32"])
    backends: list[str] = field(default_factory=lambda: ["all"])
    data: str = "synthetic"
    data_root: str | None = None
    split: str = "val"
    weights: str | None = None
    input_hw: Any = None
    batch: Any = 1
    threads: int = 2
    out: str = "results"
    artifacts: str | None = None
    profile: str = "quick"
    timeout: float = 1800.0
    max_images: int | None = None
    iters: int | None = None          # overrides of the timing profile
    min_time: float | None = None
    warmup: int | None = None
    trials: int | None = None
    cv_threshold: float = DEFAULT_CV_THRESHOLD
    timing_images: int = 16           # distinct validation images cycled by the timing loops
    force: bool = False               # rerun cells already stored
    seed: int = 0                     # seed of --weights random
    progress: bool = True
    train_epochs: int | None = None   # epochs of the quick training when no checkpoint exists
    dla_core: int | None = None       # tensorrt / onnxruntime-trt
    calib_images: int = 256           # static PTQ: calibration images from the train split
    calib_method: str | None = None   # minmax | percentile | entropy; None: the task's (calib_method_of)
    calib_seed: int = 0
    qat_epochs: int | None = None     # QAT fine-tuning when no QAT checkpoint exists (default: recipe's tenth)
    trt_precision: str = "fp16"       # precision of TensorRT engines built from the FP32 ONNX
    trt_workspace_mb: int = 1024
    keep_float: Sequence[str] = ()      # static ONNX PTQ: node names left in float (mixed precision)
    keep_float_from: str | None = None  # the quant.sensitivity report they came from

    def sizes(self, default: Sequence[int]) -> list[tuple[int, int]]:
        hw = self.input_hw
        if hw is None:
            return [(int(default[0]), int(default[1]))]
        if len(hw) == 2 and all(isinstance(v, (int, np.integer)) for v in hw):
            return [(int(hw[0]), int(hw[1]))]
        return list(dict.fromkeys((int(h), int(w)) for h, w in hw))

    def batches(self) -> list[int]:
        b = self.batch
        return [int(b)] if isinstance(b, (int, np.integer)) else list(dict.fromkeys(int(v) for v in b))


def expand(values: Sequence[str], valid: Sequence[str], what: str, all_means: Sequence[str] | None = None) -> list[str]:
    out: list[str] = []
    for v in values:
        if v == "all":
            out.extend(all_means if all_means is not None else valid)
        elif v not in valid:
            raise UsageError(f"unknown {what} {v!r}; valid: {', '.join(valid)}, all")
        else:
            out.append(v)
    return list(dict.fromkeys(out))


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values (file bytes of torch.save are
    not reproducible; this is, so seeded random weights get a stable key)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# Code an FX INT8 artifact also depends on besides the network's own modules: the qconfig and the
# preparation / conversion (quant.fx_quant), the calibration and loading (quant.torch_ptq), and
# the shared blocks every family builds from.
FX_INT8_CODE_MODULES = ("quant.fx_quant", "quant.x86_depthwise", "quant.torch_ptq", "zoo.layers")


def network_source_files(net: torch.nn.Module, model: str) -> list[Path]:
    """The source files whose code defines `net`: the module of the registry entry's builder and
    the module of every project (``zoo.``) class among its submodules (e.g. PIDNet's blocks from
    zoo.seg.ddrnet, YOLOv5's ConvBNAct from zoo.layers). Their forward code is what FX traces."""
    names = {get_entry(model).builder.__module__}
    names.update(type(m).__module__ for m in net.modules())
    files = []
    for name in sorted(n for n in names if n == "zoo" or n.startswith("zoo.")):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            files.append(Path(path))
    return files


def code_sha256(files: Sequence[Path], extra: Sequence[str] = ()) -> str:
    """sha256 of source files (named relative to the repository, so a checkout's location does not
    matter) and of `extra` strings (versions)."""
    h = hashlib.sha256()
    for f in sorted({Path(f).resolve() for f in files}):
        try:
            name = str(f.relative_to(REPO))
        except ValueError:
            name = f.name
        h.update(f"{name}|{f.stat().st_size}|".encode())
        h.update(f.read_bytes())
    for s in extra:
        h.update(f"|{s}".encode())
    return h.hexdigest()


def fx_int8_code_sha256(net: torch.nn.Module, model: str) -> str:
    """The code identity of a PyTorch FX INT8 artifact (observer state, converted TorchScript): the
    network's source files, the quantization code and the torch version. Without it a changed
    network (a new block, another activation) would silently reuse an artifact calibrated or
    converted from the old graph, which only fails, if at all, when its keys no longer fit."""
    import importlib

    extra_files = [Path(importlib.import_module(m).__file__) for m in FX_INT8_CODE_MODULES]
    return code_sha256(network_source_files(net, model) + extra_files, extra=(f"torch {torch.__version__}",))


# The code behind every ONNX artifact of a cell, besides the network's own source: export,
# ORT pre-processing and graph rewrites, the PTQ producers, QAT's QDQ export.
ONNX_CODE_MODULES = ("quant.export", "quant.ptq_static", "quant.ptq_dynamic", "quant.onnx_rewrites",
                     "quant.qdq_onnx", "quant.fx_quant", "zoo.layers")


def onnx_code_sha256(net: torch.nn.Module, model: str) -> str:
    """The code identity of a network's ONNX artifacts (FP32 export and the static, dynamic and QAT
    files made from it): its source files, the export / quantization code and the versions of
    torch, onnx and onnxruntime. Part of their file names, so that a changed network or exporter
    makes new files instead of silently reusing ones traced from the old code."""
    import importlib

    import onnx
    import onnxruntime

    extra_files = [Path(importlib.import_module(m).__file__) for m in ONNX_CODE_MODULES]
    return code_sha256(network_source_files(net, model) + extra_files,
                       extra=(f"torch {torch.__version__}", f"onnx {onnx.__version__}",
                              f"onnxruntime {onnxruntime.__version__}"))


def torch_static_name(config: str, calib_sha256: str, code_sha256: str, hw: tuple[int, int]) -> str:
    """File name of the FX PTQ observer state: quantization config, calibration set, code identity
    (`fx_int8_code_sha256`) and input size each change it."""
    return f"static_{config}-{calib_sha256[:10]}-code{code_sha256[:10]}_{hw[0]}x{hw[1]}.pt"


def build_kwargs_of(model: str, net: torch.nn.Module, meta: dict | None = None) -> dict:
    """The builder options that rebuild `net`: inference-only (``aux=False``) where the family has
    auxiliary heads, what the checkpoint recorded (`meta["build_kwargs"]`), and what the network
    reports of itself (YOLOv5's `build_kwargs`: stem and activation, which no weight shows)."""
    kwargs: dict[str, Any] = {"aux": False} if get_entry(model).aux_weights else {}
    kwargs.update((meta or {}).get("build_kwargs") or {})
    kwargs.update(getattr(net, "build_kwargs", {}) or {})
    return kwargs


@dataclass
class Prepared:
    model: str
    num_classes: int
    preprocess: dict
    weights_path: str
    weights_sha256: str
    weights_meta: dict
    net: torch.nn.Module
    export_dir: Path
    torch_artifact: dict
    params: int
    onnx: dict = field(default_factory=dict)    # (h, w, batch) -> artifact
    gmacs: dict = field(default_factory=dict)   # (h, w) -> GMACs per image
    quantized: dict = field(default_factory=dict)  # (variant, config, h, w, batch) -> artifact
    calibrations: dict = field(default_factory=dict)  # (h, w) -> CalibrationData
    task: str = "segmentation"
    group: dict | None = None   # instance networks: the grouping settings (bench.instances.group_settings)

    @property
    def onnx_code(self) -> str:
        """"code<sha10>": `onnx_code_sha256` of this network, in every ONNX artifact's file name."""
        if getattr(self, "_onnx_code", None) is None:
            self._onnx_code = "code" + onnx_code_sha256(self.net, self.model)[:10]
        return self._onnx_code

    def variant_artifact(self, cfg: "BenchConfig", kind: str, variant: str, backend: str, hw: tuple[int, int],
                         batch: int, log: Callable[[str], None]) -> dict:
        """The artifact a backend loads for `variant`; quantized ones are made once and cached."""
        if variant == "fp32":
            return self.artifact(kind, hw, batch, log)
        if variant == "qat":
            return self.qat_artifact(cfg, kind, backend, hw, batch, log)
        if kind == "torch" and variant == "dynamic":
            from quant.ptq_dynamic import quantize_dynamic_torch

            _, meta = quantize_dynamic_torch(self.net)
            return {**self.torch_artifact, "dynamic_quant": True, "quant": meta}
        config = quant_config(cfg, variant, backend)
        key = (variant, config, hw[0], hw[1], batch)
        if key in self.quantized:
            return self.quantized[key]
        if kind == "torch":  # static: FX post-training quantization, converted here once (TorchScript)
            self.quantized[key] = self.torch_static_artifact(cfg, config, hw, batch, log)
            return self.quantized[key]
        fp32 = self.artifact("onnx", hw, batch, log)
        if variant == "dynamic":
            from quant.ptq_dynamic import quantize_dynamic_onnx

            path = self.export_dir / f"dynamic-{self.onnx_code}_{hw[0]}x{hw[1]}_b{batch}.onnx"
            if not path.is_file():
                log(f"dynamic PTQ (ONNX Runtime quantize_dynamic, u8 weights) -> {path}")
                quantize_dynamic_onnx(fp32["path"], path)
        else:
            if batch != 1:
                raise UsageError("static PTQ is calibrated at batch 1; run static cells with --batch 1")
            calib = self.calibration(cfg, hw, log)
            path = self.export_dir / f"static_{config}-{calib.sha256[:10]}-{self.onnx_code}_{hw[0]}x{hw[1]}_b1.onnx"
            if not path.is_file():
                from quant.ptq_static import quantize_static_onnx

                target = config.split("-")[0]
                log(f"static PTQ ({target} QDQ, {calib_method_of(cfg, 'onnx')} calibration on {calib.size} images) -> {path}")
                # Detection: `float_head` keeps `output_head_nodes` in float for both targets:
                # the Detect head's three 1x1 convs and the decode subgraph after them (sigmoid,
                # grid / anchor arithmetic, concat; ~50 nodes). The decode mixes pixel
                # coordinates (0..640) with probabilities (0..1) in one tensor, which one 8-bit
                # scale cannot hold, and TensorRT's op list would otherwise quantize its Adds.
                # The three convs (~8 % of yolov5n's MACs at 640) feed raw box / objectness /
                # class logits of very different ranges into that decode; kept float like a
                # segmentation classifier. (Issue #7: "the head's large-range nodes kept in float".)
                head = {"float_head": True} if self.task == "detection" else {}
                if cfg.keep_float:
                    log(f"  keeping {len(cfg.keep_float)} layer(s) in float (from {cfg.keep_float_from})")
                quantize_static_onnx(fp32["path"], path, calib, target=target, method=calib_method_of(cfg, "onnx"),
                                     nodes_to_exclude=list(cfg.keep_float), **head)
        meta = json.loads(path.with_suffix(".json").read_text())
        summary = _quant_summary(meta)
        if cfg.keep_float:
            summary["kept_float"] = {"from": cfg.keep_float_from, "nodes": list(cfg.keep_float)}
        self.quantized[key] = _describe({"kind": "onnx", "path": str(path), "quant": summary})
        return self.quantized[key]

    def build_kwargs(self) -> dict:
        """The builder options of `net` (`build_kwargs_of`), as the FP32 torch artifact records them."""
        recorded = self.torch_artifact.get("build_kwargs") if self.torch_artifact else None
        return dict(recorded) if recorded is not None else build_kwargs_of(self.model, self.net)

    def torch_static_artifact(self, cfg: "BenchConfig", config: str, hw: tuple[int, int], batch: int,
                              log: Callable[[str], None]) -> dict:
        """FX PTQ: observers calibrated here, then converted to INT8 kernels here, once, and saved as
        a frozen TorchScript file the cell loads as is (`_int8_torchscript`); where that export
        fails, the cell converts the observer state itself (the former path, `fx_int8["format"]`
        says which)."""
        calib = self.calibration(cfg, hw, log)
        build_kwargs = self.build_kwargs()
        code = fx_int8_code_sha256(self.net, self.model)
        path = self.export_dir / torch_static_name(config, calib.sha256, code, hw)
        method = calib_method_of(cfg, "torch")
        if not path.is_file():
            from quant.torch_ptq import quantize_static_torch

            # Detection: the calibration images are letterboxed like the cells' (`det_calibration`).
            log(f"static PTQ (PyTorch FX, x86 kernels, {method} calibration on {calib.size} images) -> {path}")
            # Segmentation: the classifier conv stays float, so the logits do (as ORT's float_head).
            quantize_static_torch(self.net, calib, path, method=method, parent_sha256=self.weights_sha256,
                                  build_kwargs=build_kwargs, float_head=self.task == "segmentation")
        meta = json.loads(path.with_suffix(".json").read_text())
        quant = _quant_summary(meta)
        quant.update(quantizers=meta["quantizers"], code_sha256=code, observer=meta.get("observer"))
        if "head" in (meta.get("float_ops") or []):
            # float logits, as the ONNX Runtime artifact's `float_head`: not a mixed-precision cell
            quant["float_head"] = True
        if float_ops := [k for k in meta.get("float_ops") or [] if k != "head"]:
            # A network's own float ops (`quant.fx_quant.float_op_kinds`) make this a mixed-precision
            # cell; the report shows it beside the all-INT8 ones, naming the float nodes.
            from quant.fx_quant import float_op_nodes

            quant["kept_float"] = {"from": f"{type(self.net).__name__}.fx_float_ops ({', '.join(float_ops)})",
                                   "ops": list(float_ops), "nodes": float_op_nodes(self.net, float_ops)}
        from quant.fx_quant import float_scopes

        own = float_scopes(self.net)
        if scopes := [m for m in meta.get("float_modules") or [] if m in own]:
            # modules the network runs wholly in float (`quant.fx_quant.float_scopes`): mixed precision too
            kept = quant.setdefault("kept_float", {"from": f"{type(self.net).__name__}.fx_float_modules", "nodes": []})
            kept["nodes"] = [*kept["nodes"], *scopes]
            kept["modules"] = scopes
        fx_int8 = {"mode": "ptq", "scheme": meta["scheme"], "reduce_range": meta["reduce_range"],
                   "calib_method": meta["method"], "build_kwargs": meta["build_kwargs"]}

        def convert() -> torch.nn.Module:
            from quant.torch_ptq import load_static_torch

            return load_static_torch(self.net, path, reduce_range=meta["reduce_range"], method=meta["method"])

        example = _calibration_batch(calib, batch)
        ts_path = path.with_name(f"{path.stem}_b{batch}.int8.ts")
        return self._int8_torchscript(ts_path, path, convert, example, "calibration image(s)", fx_int8, quant,
                                      build_kwargs, log)

    def _int8_torchscript(self, ts_path: Path, source: Path, convert: Callable[[], torch.nn.Module],
                          example: np.ndarray, example_what: str, fx_int8: dict, quant: dict, build_kwargs: dict,
                          log: Callable[[str], None]) -> dict:
        """The torch INT8 artifact: `convert()` (FX convert of the observer / QAT state in `source`)
        saved as frozen TorchScript at `ts_path`, made once and reused while its sidecar says it
        was made from `source`'s current bytes. The one-time conversion is timed here and recorded
        (`fx_int8["convert_s"]`, `["script_s"]`): it is the variant's compile step, not the cell's.

        If tracing, freezing or the parity check fails, the artifact is `source` itself and the cell
        converts it (`fx_int8["format"] == "fx-state"`, with `torchscript_error` saying why). The
        failure is remembered in the sidecar for `source`'s bytes (the file name already carries
        the code and torch version), so later sweeps do not convert and trace again to fail again."""
        from quant.fx_quant import count_int8_modules, save_torchscript

        sidecar = ts_path.with_suffix(".json")
        source_sha = sha256_file(source)
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        if info and info.get("format") == "fx-state" and info.get("source_sha256") == source_sha:
            quant.update(info["counts"])
            return self._fx_state_artifact(source, fx_int8, quant, build_kwargs, info["torchscript_error"],
                                           info["converted_state_dict_bytes"])
        if (info and ts_path.is_file() and info.get("source_sha256") == source_sha
                and info.get("sha256") == sha256_file(ts_path)):
            quant.update(info["counts"])
        else:
            t0 = time.perf_counter()
            int8 = convert()
            convert_s = time.perf_counter() - t0
            counts = count_int8_modules(int8)
            quant.update(counts)
            try:
                check = save_torchscript(int8, ts_path, torch.from_numpy(example))
            except Exception as exc:  # noqa: BLE001 - any failure means: keep the in-cell conversion
                first = (str(exc).strip().splitlines() or [""])[0]
                reason = f"{type(exc).__name__}: {first}"[:300]
                log(f"  TorchScript export of the INT8 model failed ({reason}); the cell converts it instead")
                size = _state_dict_bytes(int8)
                write_json(sidecar, {"format": "fx-state", "source": str(source), "source_sha256": source_sha,
                                     "torchscript_error": reason, "counts": counts,
                                     "converted_state_dict_bytes": size, "torch": torch.__version__})
                return self._fx_state_artifact(source, fx_int8, quant, build_kwargs, reason, size)
            info = {"format": "torchscript", "source": str(source), "source_sha256": source_sha,
                    "path": str(ts_path), "sha256": sha256_file(ts_path), "convert_s": round(convert_s, 3),
                    **check, "parity_input": example_what, "counts": counts,
                    "converted_state_dict_bytes": _state_dict_bytes(int8),
                    "engine": torch.backends.quantized.engine, "torch": torch.__version__}
            write_json(sidecar, info)
            parity = "bit-exact" if check["bit_exact"] else f"max diff {check['max_abs_diff']:.2g}"
            log(f"  INT8 model converted once ({convert_s:.1f} s) and saved as TorchScript ({parity}) -> {ts_path}")
        fx_int8 = {**fx_int8, "format": "torchscript", "source": str(source), "source_sha256": source_sha,
                   "convert_s": info["convert_s"], "script_s": info["script_s"], "input_shape": info["input_shape"],
                   "parity": {k: info[k] for k in ("max_abs_diff", "bit_exact", "tolerance", "input_shape")}}
        art = _describe({"kind": "torch", "path": str(ts_path), "model": self.model, "num_classes": self.num_classes,
                         "build_kwargs": build_kwargs, "fx_int8": fx_int8, "quant": quant})
        # What a deployment ships and loads is this file: its bytes are the size. The converted
        # state dict's bytes stay in the sidecar for comparison with older records.
        art.update(size_basis="TorchScript file (frozen converted INT8 model, loaded as is)",
                   file_bytes=art["bytes"])
        return art

    def _fx_state_artifact(self, source: Path, fx_int8: dict, quant: dict, build_kwargs: dict, reason: str,
                           converted_bytes: int) -> dict:
        """The torch INT8 artifact when TorchScript export failed: the observer / QAT state file, which
        the cell converts itself; its size is the converted state dict's (`_int8_deploy_size`)."""
        art = _describe({"kind": "torch", "path": str(source), "model": self.model, "num_classes": self.num_classes,
                         "build_kwargs": build_kwargs,
                         "fx_int8": {**fx_int8, "format": "fx-state", "torchscript_error": reason}, "quant": quant})
        return _int8_deploy_size(art, converted_bytes)

    def qat_float_layout(self) -> tuple[list[str], list[str]]:
        """What a QAT fine-tuning of this network keeps in float now: (`fx_quant.int8_float_ops`,
        `fx_quant.float_module_names`). Segmentation keeps float logits (the "head" float op)."""
        from quant import fx_quant

        float_ops = fx_quant.int8_float_ops(self.net, float_head=self.task == "segmentation")
        return list(float_ops), list(fx_quant.float_module_names(self.net, float_ops))

    def cached_qat_checkpoint(self, cfg: "BenchConfig") -> tuple[Path | None, str | None, bool]:
        """(the cached QAT checkpoint for these FP32 weights, None, False) when one can serve this
        sweep, else (None, why not, whether fine-tuning should resume the cached run): none cached,
        stale (`quant.qat.qat_checkpoint_stale`), or a fine-tuning killed before its last epoch
        (`quant.qat.qat_run_unfinished`: resumed)."""
        from quant.qat import find_qat_checkpoint, qat_checkpoint_stale, qat_run_unfinished
        from zoo.checkpoints import read_checkpoint

        path = find_qat_checkpoint(self.model, cfg.data, cfg.artifacts, parent_sha256=self.weights_sha256)
        if path is None:
            return None, "none cached", False
        float_ops, float_modules = self.qat_float_layout()
        # A cached checkpoint is reused only for these FP32 weights and this CPU's QAT weight range.
        why = qat_checkpoint_stale(read_checkpoint(path).get("meta", {}).get("qat") or {}, self.weights_sha256,
                                   float_modules=float_modules, float_ops=float_ops, detector=self.task == "detection")
        if why:
            return None, why, False
        unfinished = qat_run_unfinished(path)
        return (None, unfinished, True) if unfinished else (Path(path), None, False)

    def stored_qat_fits(self, summary: dict) -> bool:
        """Whether a stored QAT record (its `artifact.quant` summary) was fine-tuned with the float
        layout a fine-tuning would use now: such a record stands for this cell when no QAT checkpoint
        is cached here (a fresh machine), instead of fine-tuning again only to re-measure it."""
        from quant.fx_quant import float_scopes

        float_ops, float_modules = self.qat_float_layout()
        stored_ops = (["head"] if summary.get("float_head") else []) + list(summary.get("float_ops") or [])
        own = set(float_scopes(self.net))  # what `qat_artifact` records of the float modules
        return (summary.get("parent_sha256") == self.weights_sha256 and sorted(stored_ops) == sorted(float_ops)
                # `quant.qat.qat_checkpoint_stale`: the detector trainer never let validation move them
                and (self.task == "detection" or bool(summary.get("ranges_fixed_in_validation")))
                and sorted(summary.get("float_modules") or []) == sorted(m for m in float_modules if m in own))

    def qat_checkpoint(self, cfg: "BenchConfig", log: Callable[[str], None]) -> Path:
        """The QAT checkpoint fine-tuned from exactly these FP32 weights on the weight range this CPU
        trains (made when missing or stale, `quant.qat.qat_checkpoint_stale`; announced)."""
        if getattr(self, "_qat_path", None) is not None:
            return self._qat_path
        if getattr(self, "_qat_error", None) is not None:
            raise self._qat_error  # fine-tune once per sweep, even when it fails
        path, why, resume = self.cached_qat_checkpoint(cfg)
        if why:
            log(f"QAT: {why}; {'resuming' if resume else 'fine-tuning'} {self.model} from {self.weights_path} "
                "(announced: this trains)")
            rc = subprocess.call(qat_command(cfg, self.model, self.weights_path, resume))
            path, why, _ = self.cached_qat_checkpoint(cfg)
            if rc != 0 or why:
                self._qat_error = RuntimeError(
                    f"QAT fine-tuning failed ({f'exit status {rc}' if rc else why}; its messages are above); "
                    f"re-run it alone with: {shlex.join(qat_command(cfg, self.model, self.weights_path, True))}")
                raise self._qat_error
        self._qat_path = Path(path)
        return self._qat_path

    def qat_artifact(self, cfg: "BenchConfig", kind: str, backend: str, hw: tuple[int, int], batch: int,
                     log: Callable[[str], None]) -> dict:
        from quant.qat import load_qat

        ckpt = self.qat_checkpoint(cfg, log)
        ckpt_sha = sha256_file(ckpt)
        config = quant_config(cfg, "qat", backend)
        key = ("qat", config, ckpt_sha, hw[0], hw[1], batch)
        if key in self.quantized:
            return self.quantized[key]
        prepared, meta = load_qat(self.model, ckpt, num_classes=self.num_classes)
        qat_meta = meta["qat"]
        summary = {"variant": "qat", "scheme": qat_meta["scheme"], "checkpoint": str(ckpt), "checkpoint_sha256": ckpt_sha,
                   "parent_sha256": qat_meta["parent"]["sha256"], "epochs": meta.get("epoch"),
                   "freeze_bn_epoch": qat_meta["freeze_bn_epoch"], "freeze_observer_epoch": qat_meta["freeze_observer_epoch"],
                   # None: ranges started from the first training batches (runs before session 8).
                   # With a calibrated start, "epochs" 0 means no fine-tuning epoch beat it.
                   "calibration_images": (qat_meta.get("calibration") or {}).get("size"),
                   "calibration_method": qat_meta.get("calibration_method"),
                   "ranges_fixed_in_validation": bool(qat_meta.get("ranges_fixed_in_validation"))}
        if "head" in (qat_meta.get("float_ops") or []):
            summary["float_head"] = True  # float logits, as static PTQ's: not a mixed-precision cell
        if float_ops := [k for k in qat_meta.get("float_ops") or [] if k != "head"]:
            summary["float_ops"] = float_ops
        from quant.fx_quant import float_scopes

        own = float_scopes(self.net)
        if scopes := [m for m in qat_meta.get("float_modules") or [] if m in own]:
            summary["float_modules"] = scopes
        if split := selected_on_split(ckpt, meta):
            summary["selected_on_split"] = split
        metrics = meta.get("metrics") or {}
        if self.task == "detection":  # zoo.det.train checkpoints score COCO mAP50-95
            summary["val_map50_95_at_training"] = metrics.get("map")
        else:
            summary["val_miou_at_training"] = metrics.get("miou")
        if kind == "torch":
            from quant.fx_quant import convert_int8

            # Converted here once and saved as TorchScript, like static PTQ (`_int8_torchscript`).
            # The parity input is seeded noise: QAT has no calibration set in this process.
            code = fx_int8_code_sha256(self.net, self.model)
            summary["code_sha256"] = code
            ts_path = self.export_dir / f"qat_fx-int8-{ckpt_sha[:10]}-code{code[:10]}_{hw[0]}x{hw[1]}_b{batch}.int8.ts"
            example = np.random.default_rng(0).standard_normal((batch, 3, *hw)).astype(np.float32)
            art = self._int8_torchscript(ts_path, Path(ckpt), lambda: convert_int8(prepared), example,
                                         "seeded N(0, 1) noise", {"mode": "qat"}, summary,
                                         dict(qat_meta.get("build_kwargs") or {}), log)
            self.quantized[key] = art
            return art
        else:
            from quant.fx_quant import export_qdq_onnx

            target = config.rsplit("-", 1)[-1]
            path = self.export_dir / f"qat_{target}-{ckpt_sha[:10]}-{self.onnx_code}_{hw[0]}x{hw[1]}_b{batch}.onnx"
            if not path.is_file():
                log(f"QAT -> QDQ ONNX for {target} ({hw[0]}x{hw[1]}, batch {batch}) -> {path}")
                info = export_qdq_onnx(prepared, path, input_hw=hw, batch=batch, target=target)
                parent_bytes = os.path.getsize(self.artifact("onnx", hw, batch, log)["path"])
                write_json(path.with_suffix(".json"), {**summary, "target": target, **info,
                                                        "size_ratio": info["graph"]["file_bytes"] / parent_bytes})
            info = json.loads(path.with_suffix(".json").read_text())
            summary.update(target=target, size_ratio=info.get("size_ratio"),
                           graph={k: info["graph"][k] for k in ("quantized_convs", "float_convs", "quantize_linear",
                                                                 "dequantize_linear") if k in info["graph"]})
            art = {"kind": "onnx", "path": str(path), "quant": summary}
        self.quantized[key] = _describe(art)
        return self.quantized[key]

    def calibration(self, cfg: "BenchConfig", hw: tuple[int, int], log: Callable[[str], None]):
        if hw not in self.calibrations:
            from quant.calibrate import build_calibration
            from zoo.data import Preprocess

            log(f"calibration set: {cfg.calib_images} {cfg.data}/train images at {hw[0]}x{hw[1]} (seed {cfg.calib_seed})")
            if self.task == "detection":
                self.calibrations[hw] = det_calibration(cfg, hw, self.preprocess, log)
            else:
                self.calibrations[hw] = build_calibration(
                    cfg.data, root=cfg.data_root, split="train", num_images=cfg.calib_images, seed=cfg.calib_seed,
                    preprocess=Preprocess.from_dict(self.preprocess), input_hw=hw)
        return self.calibrations[hw]

    def artifact(self, kind: str, hw: tuple[int, int], batch: int, log: Callable[[str], None]) -> dict:
        if kind == "torch":
            return self.torch_artifact
        key = (hw[0], hw[1], batch)
        if key not in self.onnx:
            path = self.export_dir / f"fp32-{self.onnx_code}_{hw[0]}x{hw[1]}_b{batch}.onnx"
            if not path.is_file():
                from quant.export import export_onnx

                log(f"exporting {self.model} to ONNX ({hw[0]}x{hw[1]}, batch {batch}, opset 17, onnxsim) -> {path}")
                export_onnx(self.net, path, input_hw=hw, batch=batch)
            self.onnx[key] = _describe({"kind": "onnx", "path": str(path)})
        return self.onnx[key]

    def gmacs_at(self, hw: tuple[int, int]) -> float:
        if hw not in self.gmacs:
            self.gmacs[hw] = count_gmacs(self.net, hw)
        return self.gmacs[hw]


def _quant_summary(meta: dict) -> dict:
    """The provenance a record keeps of a quantized artifact (the full metadata is its sidecar)."""
    keep = ("variant", "target", "format", "method", "per_channel", "activation_type", "weight_type",
            "reduce_range", "calibration", "versions", "size_ratio", "note", "int8_ops", "float_convs")
    out = {k: meta[k] for k in keep if k in meta}
    out["parent_sha256"] = (meta.get("parent") or {}).get("sha256")
    graph = meta.get("graph") or {}
    out["graph"] = {k: graph[k] for k in ("quantized_convs", "float_convs", "quantize_linear", "dequantize_linear",
                                          "conv_integer", "zero_points_all_zero") if k in graph}
    return out


def _state_dict_bytes(model: torch.nn.Module) -> int:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _int8_deploy_size(art: dict, size: int) -> dict:
    """Size of a PyTorch INT8 artifact the cell converts itself (no TorchScript file): `size`, the
    bytes of the converted model's state dict (packed int8 weights, qparams). The artifact file
    holds the float calibration / QAT state it is converted from, so its bytes would overstate the
    variant's size."""
    art.update(file_bytes=art["bytes"], bytes=size, size_mb=size / 1e6,
               size_basis="converted INT8 state dict (the file holds the float state it is converted from)")
    return art


def _calibration_batch(calib, batch: int) -> np.ndarray:
    """`batch` calibration images as one NCHW array (cycling when there are fewer): the input the
    INT8 TorchScript is traced and checked at."""
    arrays = [np.asarray(calib.arrays[i % calib.size], dtype=np.float32) for i in range(batch)]
    return np.ascontiguousarray(np.concatenate(arrays, axis=0))


def _describe(art: dict) -> dict:
    art["sha256"] = sha256_file(art["path"])
    art["bytes"] = os.path.getsize(art["path"])
    art["size_mb"] = art["bytes"] / 1e6
    return art


def det_calibration(cfg: BenchConfig, hw: tuple[int, int], preprocess: dict, log: Callable[[str], None]):
    """Static-PTQ calibration for a detector: the seeded train-split subset that
    `quant.calibrate.build_calibration` draws (same selection rule), but letterboxed to `hw` exactly
    as the cells feed images (`bench.imageops.letterbox`), not stretched: grey bands and the
    aspect ratio are part of the activation ranges the INT8 model will see."""
    from quant.calibrate import MIN_IMAGES, CalibrationData, QuantError, _hash, seeded_subset

    from bench.imageops import RESIZE_BACKEND, Preprocessor, letterbox
    from zoo import data as zdata

    ds = zdata.build_dataset(cfg.data, root=cfg.data_root, split="train")
    order = sorted(range(len(ds)), key=lambda i: str(ds.files[i]))
    available, wanted = len(order), int(cfg.calib_images)
    if available < min(wanted, MIN_IMAGES):
        raise QuantError(f"calibration split 'train' of {cfg.data} has {available} images, fewer than the "
                         f"minimum {MIN_IMAGES}; add training images or lower --calib-images")
    if available < wanted:
        log(f"  calibration: {cfg.data}/train has {available} images, {wanted} requested; using all {available}")
    chosen = seeded_subset(order, wanted, int(cfg.calib_seed))
    norm = Preprocessor(preprocess, hw)
    arrays, names = [], []
    for index in chosen:
        sample = ds.load(index)
        arrays.append(norm.normalize([letterbox(sample.image, hw)[0]]))
        names.append(sample.name)
    pre = {**preprocess, "letterbox": f"fixed {hw[0]}x{hw[1]}, grey 114, {RESIZE_BACKEND}"}
    digest = _hash(cfg.data, "train", names, pre, hw, int(cfg.calib_seed), arrays)
    return CalibrationData(arrays=arrays, names=names, sha256=digest, dataset=cfg.data, split="train",
                           seed=int(cfg.calib_seed), input_hw=hw, preprocess=pre, requested=wanted)


def _check_det_trainer(cfg: BenchConfig, entry) -> None:
    """Without --weights and without a cached checkpoint, `zoo.api.load_fp32` trains a detector
    with the quick detection recipe (`zoo.det.train`, announced); where that trainer is missing,
    stop with one line asking for --weights instead of a traceback."""
    from zoo.api import find_fp32_checkpoint

    if find_fp32_checkpoint(entry.name, cfg.data, cfg.artifacts) is not None:
        return
    try:
        import zoo.det.train  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"no FP32 checkpoint for {entry.name} on {cfg.data} and no detection trainer to make one "
                         f"({exc}); pass --weights PATH (e.g. ../shared/weights/yolov5n.pt) or --weights random") from None


def prepare_model(cfg: BenchConfig, model: str) -> Prepared:
    """FP32 weights (cached, trained with the quick recipe if missing, or seeded random)."""
    from zoo import data as zdata

    entry = get_entry(model)
    card = zdata.load_card(cfg.data)
    if cfg.weights is None and card.task == "detection":
        _check_det_trainer(cfg, entry)
    task = "instance" if entry.task == "instance" else card.task
    weights = cfg.weights
    if task == "instance":  # zoo.instances.train's checkpoint (found, or trained with the quick recipe)
        from bench import instances

        instances.check_dataset(cfg.data)
        weights = weights or str(instances.fp32_checkpoint(cfg, entry.name))
    kwargs = dict(dataset=cfg.data, weights=weights, artifacts=cfg.artifacts, data_root=cfg.data_root,
                  threads=cfg.threads, progress=cfg.progress, train_epochs=cfg.train_epochs)
    if cfg.weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            loaded = load_fp32(entry.name, **kwargs)
    else:
        loaded = load_fp32(entry.name, **kwargs)
    group = None
    if task == "instance":
        instances.check_weights(loaded, cfg.data)
        group = instances.group_settings(loaded.path, lambda m: print(m, file=sys.stderr, flush=True))
    net = loaded.model.eval()
    preprocess = loaded.preprocess or zdata.Preprocess.from_card(card).to_dict()
    weights_sha = loaded.sha256 or state_digest(net)
    meta = _meta_summary(loaded.meta, loaded.path)
    if cfg.weights == "random":
        meta["seed"] = cfg.seed
    export_dir = artifacts_dir(cfg.artifacts) / "export" / entry.name / cfg.data / weights_sha[:16]
    torch_path = export_dir / "fp32.pt"
    if not torch_path.is_file():
        with atomic_path(torch_path) as tmp:
            torch.save(net.state_dict(), tmp)  # inference weights only (no aux heads, no optimizer)
    # The builder options travel with the artifact: the torch backend rebuilds the network from
    # them (a ReLU or Focus-stem YOLOv5 is not the default one), as ONNX export uses `net` itself.
    torch_art = _describe({"kind": "torch", "path": str(torch_path), "model": entry.name,
                           "num_classes": loaded.num_classes,
                           "build_kwargs": build_kwargs_of(entry.name, net, loaded.meta)})
    return Prepared(model=entry.name, num_classes=loaded.num_classes, preprocess=preprocess,
                    weights_path=str(loaded.path), weights_sha256=weights_sha, weights_meta=meta, net=net,
                    export_dir=export_dir, torch_artifact=torch_art, params=count_params(net), task=task,
                    group=group)


def selected_on_split(path: str | Path, meta: dict) -> str | None:
    """The split a trainer's best.pt was picked on (the best of its evaluations there), else None:
    accuracy measured on that same split is optimistic by the evaluation-to-evaluation noise."""
    return meta.get("split") if Path(path).name == "best.pt" else None


def _meta_summary(meta: dict, path: str | Path | None = None) -> dict:
    keep = ("model", "dataset", "epoch", "seed", "created", "weights")
    out = {k: meta[k] for k in keep if k in meta}
    if isinstance(meta.get("recipe"), dict):
        out["recipe"] = meta["recipe"].get("name")
        out["recipe_epochs"] = meta["recipe"].get("epochs")
    for key in ("train_seconds", "train_active_seconds"):  # best.pt: training time up to the selected epoch
        if meta.get(key) is not None:
            out[key] = meta[key]
    if path is not None and (split := selected_on_split(path, meta)):
        out["selected_on_split"] = split
    if isinstance(meta.get("metrics"), dict):
        if meta["metrics"].get("map") is not None:  # detection checkpoints (zoo.det.train)
            out["val_map50_95_at_training"] = meta["metrics"].get("map")
        else:
            out["val_miou_at_training"] = meta["metrics"].get("miou")
    return out


def prepare_evalset(cfg: BenchConfig, hw: tuple[int, int], log: Callable[[str], None]) -> dict:
    """Image paths + labels at `hw` (uint8 .npz) for the split, cached by a fingerprint of the
    files (path, size, mtime); `sha256` hashes their contents (the data-subset hash)."""
    from zoo import data as zdata

    from bench.evalset_cache import contents_sha256, evalset_slot, file_listing
    from bench.imageops import resize_label

    ds = zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.split)
    n = len(ds) if not cfg.max_images else min(len(ds), cfg.max_images)
    if n == 0:
        raise UsageError(f"the {cfg.data} {cfg.split} split has no images")
    files = [(Path(i).resolve(), Path(l).resolve()) for i, l in ds.files[:n]]
    # One row per (image, label) pair, as the fingerprint has always been computed.
    listing = [a + b for a, b in zip(file_listing(i for i, _ in files), file_listing(l for _, l in files))]
    slot = evalset_slot(cfg.artifacts, cfg.data, cfg.split, [cfg.data, cfg.split, list(hw), listing],
                        f"_{hw[0]}x{hw[1]}")
    if slot.meta is not None:
        return slot.meta
    log(f"evaluation set: {n} {cfg.data}/{cfg.split} labels at {hw[0]}x{hw[1]} -> {slot.folder}")
    labels = np.zeros((n, *hw), dtype=np.uint8)
    for i in range(n):
        labels[i] = resize_label(np.asarray(ds[i].label), hw)
    labels_path = slot.folder / "labels.npz"
    with atomic_path(labels_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, labels=labels)
    meta = {"labels": str(labels_path), "images": [str(i) for i, _ in files], "n": n, "input_hw": list(hw),
            "fingerprint": slot.fingerprint, "sha256": contents_sha256(p for pair in files for p in pair),
            "dataset": cfg.data, "split": cfg.split}
    write_json(slot.meta_path, meta)
    return meta


def prepare_det_evalset(cfg: BenchConfig, log: Callable[[str], None]) -> dict:
    """A detection split for the cells: image paths, their COCO image ids and a COCO-format
    ground-truth json (the dataset's own annotation file for COCO, else one written here from the
    labels, restricted to the images used). Cached by a fingerprint of the files; `sha256` hashes
    the images' and the ground truth's contents (the data-subset hash)."""
    from zoo import data as zdata

    from bench.evalset_cache import contents_sha256, evalset_slot, file_listing

    ds = zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.split)
    n = len(ds) if not cfg.max_images else min(len(ds), cfg.max_images)
    if n == 0:
        raise UsageError(f"the {cfg.data} {cfg.split} split has no images")
    recs = ds.images[:n]
    files = [Path(r.path).resolve() for r in recs]
    gt = ds.ground_truth()
    if isinstance(gt, (str, Path)):
        gt_file = Path(gt).resolve()
        gt_id: Any = file_listing([gt_file])[0]
    else:
        ids = {int(r.image_id) for r in recs}
        gt = {**gt, "images": [im for im in gt["images"] if int(im["id"]) in ids],
              "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in ids]}
        gt_id = hashlib.sha256(json.dumps(gt, sort_keys=True).encode()).hexdigest()
    slot = evalset_slot(cfg.artifacts, cfg.data, cfg.split, [cfg.data, cfg.split, file_listing(files), gt_id],
                        "_det", required="gt")
    if slot.meta is not None:
        return slot.meta
    log(f"evaluation set: {n} {cfg.data}/{cfg.split} images with COCO-format ground truth -> {slot.folder}")
    if isinstance(gt, dict):
        gt_file = slot.folder / "ground_truth.json"
        write_json(gt_file, gt)
    meta = {"task": "detection", "labels": None, "images": [str(i) for i in files],
            "image_ids": [int(r.image_id) for r in recs], "gt": str(gt_file),
            "category_ids": [int(c) for c in ds.category_ids], "classes": list(ds.classes), "n": n,
            "fingerprint": slot.fingerprint, "sha256": contents_sha256(files + [gt_file]),
            "dataset": cfg.data, "split": cfg.split}
    write_json(slot.meta_path, meta)
    return meta


def _split_detections(arrays: dict, name: str, n: int) -> list[np.ndarray]:
    dets, counts = np.asarray(arrays[name]), np.asarray(arrays[f"{name}_counts"])
    if len(counts) != n or int(counts.sum()) != len(dets):
        raise RuntimeError(f"detections for {len(counts)} images ({int(counts.sum())} boxes, {len(dets)} rows), "
                           f"expected {n} images")
    return np.split(dets.reshape(-1, 6), np.cumsum(counts)[:-1])


def score_detections(ev: dict, arrays: dict, reference: dict | None = None, gt: Any = None) -> dict:
    """COCO mAP of a cell's "map"-preset detections (pycocotools, on the evaluated image ids) and
    box agreement of its "deploy"-preset detections with the PyTorch FP32 reference's."""
    from bench.metrics import BoxAgreement
    from zoo.det.coco_eval import coco_map, detections_to_coco

    n = len(ev["image_ids"])
    per_image = _split_detections(arrays, "map", n)
    dets = [d for image_id, boxes in zip(ev["image_ids"], per_image)
            for d in detections_to_coco(boxes, image_id, ev["category_ids"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "no detections to evaluate: mAP is 0"
        scores = coco_map(dets, gt if gt is not None else ev["gt"], image_ids=ev["image_ids"],
                          class_names=ev["classes"], category_ids=ev["category_ids"])
    metrics: dict[str, Any] = {"map50_95": scores.map, "map50": scores.map50, "map75": scores.map75,
                               "per_class_ap": scores.per_class_ap, "detections": len(dets)}
    if reference is not None:
        agree = BoxAgreement(iou_thres=0.5)
        for mine, ref in zip(_split_detections(arrays, "deploy", n), _split_detections(reference, "deploy", n)):
            agree.update(mine, ref)
        a = agree.as_dict()
        metrics.update(box_agreement=a["f1"], box_recall_vs_ref=a["recall"], box_precision_vs_ref=a["precision"],
                       box_mean_iou_vs_ref=a["mean_iou"], boxes_matched=a["matched"], boxes_ref=a["ref_boxes"],
                       boxes=a["boxes"])
    return metrics


def det_protocol(hw: tuple[int, int]) -> dict:
    """How a detection cell's numbers are made (stored in every detection record)."""
    from bench.imageops import RESIZE_BACKEND
    from zoo.det.postprocess import DEPLOY_NMS, MAP_NMS

    return {
        "input": f"letterbox to a fixed {hw[0]}x{hw[1]} (aspect ratio kept, grey 114, centred; YOLOv5 val.py's "
                 "square letterbox). python -m zoo.evaluate letterboxes each image to its own 'rect' shape "
                 "instead, so its mAP differs slightly",
        "resize": RESIZE_BACKEND,
        "nms": {"map": MAP_NMS.as_dict(), "deploy": DEPLOY_NMS.as_dict(),
                "implementation": "torchvision.ops.batched_nms (zoo.det.postprocess)"},
        "map": "pycocotools COCOeval bbox on the evaluated image ids: map50_95 = stats[0], map50 = stats[1]; "
               "'map' preset detections mapped back to original pixels",
        "box_agreement": "F1 of greedy same-class matches with IoU >= 0.5 between this cell's and the PyTorch "
                         "FP32 reference's 'deploy' preset detections",
        "e2e": "letterbox + normalise + model + NMS ('deploy' preset) + boxes back to original pixels",
        "postprocess": "NMS ('deploy' preset) + boxes back to original pixels, timed inside each e2e iteration",
        "memory": "peak_rss_mb: load, first inference and model-only timing (before torch is imported in "
                  "ONNX Runtime cells); peak_rss_e2e_mb: the whole cell, incl. torch for NMS",
    }


def run_cell_process(spec: dict, timeout: float) -> dict:
    """Run one cell in a fresh interpreter; a crash or timeout becomes a failed result.

    Detection cells write their detections to `detections_out` (a file in the cell's temporary
    folder unless the spec names one); they come back as arrays in `result["_detections"]`."""
    with tempfile.TemporaryDirectory(prefix="edgezoo-cell-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        log_path = Path(tmp) / "output.log"
        spec = {**spec, "parent_pid": os.getpid()}
        if spec.get("task") == "detection" and not spec.get("detections_out"):
            spec["detections_out"] = str(Path(tmp) / "detections.npz")
        spec_path.write_text(json.dumps(spec))
        threads = str(spec["threads"])
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "PYTHONPATH": os.pathsep.join(
                   [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bench.cell", str(spec_path), str(out_path)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return {"status": "failed", "error": f"timed out after {timeout:g} s (raise --timeout)"}
            except BaseException:
                _kill_group(proc)  # Ctrl-C in the parent: do not leave the cell running
                raise
        if out_path.is_file():
            result = json.loads(out_path.read_text())
            det_file = spec.get("detections_out")
            if result.get("status") == "ok" and det_file and Path(det_file).is_file():
                with np.load(det_file) as z:
                    result["_detections"] = {k: z[k] for k in z.files}
            return result
        tail = [l for l in log_path.read_text(errors="replace").strip().splitlines() if l.strip()][-1:] or ["no output"]
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            how = f"killed by {sig}"
        else:
            how = f"exited with code {rc}"
        return {"status": "failed", "error": f"cell process {how}: {tail[0][:300]}"}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


class _Sweep:
    """State of one sweep: prepared models, evaluation sets, references, stored records."""

    def __init__(self, cfg: BenchConfig, log: Callable[[str], None]):
        self.cfg = cfg
        self.log = log
        self.profile = resolve_profile(cfg.profile, iters=cfg.iters, min_time=cfg.min_time,
                                       warmup=cfg.warmup, trials=cfg.trials)
        self.profile_id = profile_id(self.profile)
        self.evalsets: dict[tuple[int, int], dict] = {}
        self.references: dict[tuple[str, tuple[int, int]], dict] = {}
        self.task = _task(cfg)
        self._coco_gt: dict[str, Any] = {}
        self.available: dict[str, tuple[bool, str]] = {}
        self.written = 0
        self.kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        self.kill_in_write = int(os.environ.get(KILL_IN_WRITE_ENV, "0") or 0)

    def availability(self, backend: str) -> tuple[bool, str]:
        if backend not in self.available:
            try:
                self.available[backend] = get_backend(backend).available()
            except Exception as exc:  # noqa: BLE001 - a backend whose check crashes is not usable
                self.available[backend] = (False, f"availability check failed: {type(exc).__name__}: {exc}")
        return self.available[backend]

    def evalset(self, hw: tuple[int, int]) -> dict:
        if hw not in self.evalsets:
            if self.task == "detection":  # no labels at the input size: one set serves every size
                self.evalsets[hw] = next(iter(self.evalsets.values()), None) or prepare_det_evalset(self.cfg, self.log)
            elif self.task == "instance":  # labels plus true instance ids (bench.instances)
                from bench.instances import prepare_instance_evalset

                self.evalsets[hw] = prepare_instance_evalset(self.cfg, hw, self.log)
            else:
                self.evalsets[hw] = prepare_evalset(self.cfg, hw, self.log)
        return self.evalsets[hw]

    def score(self, ev: dict, arrays: dict, reference: dict | None) -> dict:
        """Detection metrics of a cell's (or the reference's) detections, in this process."""
        from zoo.det.coco_eval import load_coco_gt

        if ev["gt"] not in self._coco_gt:  # parse the ground-truth json once per sweep
            self._coco_gt[ev["gt"]] = load_coco_gt(ev["gt"])
        ref_arrays = None
        if reference is not None and reference.get("status") == "ok":
            with np.load(reference["path"]) as z:
                ref_arrays = {k: z[k] for k in z.files}
        return score_detections(ev, arrays, ref_arrays, gt=self._coco_gt[ev["gt"]])

    def reference(self, prep: Prepared, hw: tuple[int, int], base_spec: dict) -> dict:
        """The PyTorch FP32 masks for (weights, dataset, split, size): cached, else computed in
        its own process. A failed reference is reported in each record, not fatal."""
        # Instance references hold instances, which depend on the grouping settings too.
        post = f"-g{GroupConfig.from_dict(prep.group).digest()}" if prep.group is not None else ""
        key = (prep.weights_sha256, hw, post)
        if key in self.references:
            return self.references[key]
        ev = self.evalset(hw)
        folder = artifacts_dir(self.cfg.artifacts) / "reference" / prep.model / prep.weights_sha256[:16]
        stem = f"{self.cfg.data}-{self.cfg.split.replace('+', '_')}-{ev['fingerprint'][:12]}_{hw[0]}x{hw[1]}{post}"
        masks_path, meta_path = folder / f"{stem}.npz", folder / f"{stem}.json"
        if meta_path.is_file() and masks_path.is_file():
            ref = json.loads(meta_path.read_text())
        elif self.task == "detection":
            ref = self._det_reference(prep, hw, base_spec, ev, masks_path, meta_path)
        else:
            what = "argmax masks and instances" if self.task == "instance" else "argmax masks"
            self.log(f"reference {prep.model} torch/fp32 {hw[0]}x{hw[1]}: {what} in a separate process ...")
            spec = {**base_spec, "mode": "reference", "backend": "torch", "variant": "fp32", "batch": 1,
                    "artifact": prep.torch_artifact, "reference_out": str(masks_path), "reference": None,
                    "cell_id": f"reference/{prep.model}/{hw[0]}x{hw[1]}"}
            # Preparation, not a measurement: it gets at least 10 minutes even when --timeout is
            # short (which tests and smoke runs use to catch hanging cells quickly).
            result = run_cell_process(spec, max(self.cfg.timeout, REFERENCE_MIN_TIMEOUT))
            if result.get("status") == "ok" and masks_path.is_file():
                if self.task == "instance":
                    from bench.instances import REFERENCE_METRICS as keys
                else:
                    keys = ("miou", "pixel_accuracy")
                ref = {"status": "ok", "path": str(masks_path), "metrics": {k: result["metrics"][k] for k in keys},
                    "weights_sha256": prep.weights_sha256, "images": result.get("images"),
                    "evalset": ev["fingerprint"], "created": now_iso()}
                write_json(meta_path, ref)
            else:
                ref = {"status": "failed", "error": result.get("error") or "no masks written"}
                self.log(f"  -> reference failed: {ref['error']} (cells get no pixel agreement)")
        self.references[key] = ref
        return ref

    def _det_reference(self, prep: Prepared, hw: tuple[int, int], base_spec: dict, ev: dict, dets_path: Path,
                       meta_path: Path) -> dict:
        """The PyTorch FP32 detections ("map" and "deploy" presets) at this input size, scored here."""
        self.log(f"reference {prep.model} torch/fp32 {hw[0]}x{hw[1]}: detections in a separate process ...")
        spec = {**base_spec, "mode": "reference", "backend": "torch", "variant": "fp32", "batch": 1,
                "artifact": prep.torch_artifact, "detections_out": str(dets_path), "reference": None,
                "cell_id": f"reference/{prep.model}/{hw[0]}x{hw[1]}"}
        result = run_cell_process(spec, max(self.cfg.timeout, REFERENCE_MIN_TIMEOUT))
        if result.get("status") == "ok" and "_detections" in result:
            try:
                m = self.score(ev, result["_detections"], None)
            except Exception as exc:  # noqa: BLE001 - a reference that cannot be scored is reported, not fatal
                result = {"status": "failed", "error": f"scoring the reference failed: {type(exc).__name__}: {exc}"}
            else:
                ref = {"status": "ok", "path": str(dets_path),
                       "metrics": {"map50_95": m["map50_95"], "map50": m["map50"]},
                       "weights_sha256": prep.weights_sha256, "images": result.get("images"),
                       "evalset": ev["fingerprint"], "created": now_iso()}
                write_json(meta_path, ref)
                return ref
        ref = {"status": "failed", "error": result.get("error") or "no detections written"}
        self.log(f"  -> reference failed: {ref['error']} (cells get no box agreement)")
        return ref

    def write(self, rec: dict) -> Path:
        self.written += 1
        path = write_record(self.cfg.out, rec, _fault_half=self.written == self.kill_in_write)
        if self.kill_after and self.written >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return path


def _planned(cfg: BenchConfig) -> tuple[list[str], list[str], list[str]]:
    def split(values: Sequence[str]) -> list[str]:  # "--quant fp32,static" = "--quant fp32 static"
        return [v for value in values for v in str(value).split(",") if v]

    task = _task(cfg)
    # Instance networks: QAT would fine-tune with the segmentation loss (quant.qat), which cannot
    # train the centre / offset heads, so "all" means fp32, static and dynamic for them.
    implemented = tuple(v for v in IMPLEMENTED_VARIANTS if not (task == "instance" and v == "qat"))
    variants = expand(split(cfg.variants), VARIANTS, "variant", all_means=implemented)
    if task == "instance" and "qat" in variants:
        raise UsageError("--quant qat: QAT for instance networks is not implemented (quant.qat fine-tunes with the "
                         "segmentation loss, not the centre / offset losses of zoo.instances.train); measure "
                         "fp32, static or dynamic")
    pending = [v for v in variants if v not in IMPLEMENTED_VARIANTS]
    if pending:
        raise UsageError(
            f"--quant {' '.join(pending)}: not implemented yet (QAT arrives with issue #3); "
            f"implemented variants: {', '.join(IMPLEMENTED_VARIANTS)}"
        )
    backends = expand(split(cfg.backends), BACKENDS, "backend")
    if "qat" in variants and cfg.weights == "random" and "qat" in split(cfg.variants):
        raise UsageError("--quant qat with --weights random: QAT fine-tunes trained FP32 weights; "
                         "pass a checkpoint with --weights, or leave --weights unset")
    from zoo.data import load_card

    card_task = load_card(cfg.data).task
    if card_task not in ("segmentation", "detection"):
        raise UsageError(f"bench.run measures segmentation and detection datasets; {cfg.data!r} is a {card_task} "
                         "dataset (score instance networks with python -m zoo.instances.evaluate)")
    if task == "instance":  # instance networks on a segmentation card with instance ids
        from bench.instances import check_dataset

        check_dataset(cfg.data)
    names: list[str] = []
    for m in split(cfg.models):
        # "all" means every network of the dataset's task; a named network of another task is an error.
        names.extend(list_models(task=task) if m == "all" else [get_entry(m).name])
    wrong = [n for n in names if get_entry(n).task != task]
    if wrong and task == "instance":
        raise UsageError(f"--model {' '.join(wrong)}: {get_entry(wrong[0]).task} network(s) in a sweep of instance "
                         f"networks; measure them in a separate run (instance networks: "
                         f"{', '.join(list_models(task='instance'))})")
    if wrong:
        raise UsageError(f"--model {' '.join(wrong)}: {get_entry(wrong[0]).task} network(s) on the {task} "
                         f"dataset {cfg.data!r}; pick a {get_entry(wrong[0]).task} dataset or one of: "
                         f"{', '.join(list_models(task=task))}")
    return list(dict.fromkeys(names)), variants, backends


def _check(cfg: BenchConfig, sizes: list[tuple[int, int]], batches: list[int], task: str = "segmentation") -> None:
    if cfg.profile not in PROFILES:
        raise UsageError(f"unknown profile {cfg.profile!r}; valid: {', '.join(PROFILES)}")
    if any(h < 8 or w < 8 for h, w in sizes):
        raise UsageError(f"input sizes must be at least 8x8, got {sizes}")
    if task == "detection" and any(h % DET_STRIDE or w % DET_STRIDE for h, w in sizes):
        raise UsageError(f"detector input sizes must be multiples of {DET_STRIDE} (the stride), got "
                         f"{', '.join(f'{h}x{w}' for h, w in sizes)}; e.g. --input-size 640x640")
    if any(b < 1 for b in batches):
        raise UsageError(f"batch sizes must be >= 1, got {batches}")
    if cfg.threads < 1:
        raise UsageError("--threads must be >= 1")
    for name, v in (("--iters", cfg.iters), ("--trials", cfg.trials), ("--timing-images", cfg.timing_images)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be >= 1")
    if cfg.trt_precision not in ("fp16", "fp32"):
        raise UsageError("--trt-precision must be fp16 or fp32")
    if cfg.keep_float_from:
        check_keep_float_method(cfg)


def check_keep_float_method(cfg: BenchConfig) -> None:
    """A mixed-precision list is the answer for the calibration it was searched with; the static ONNX
    cells must calibrate the same way, or the layers left in float are not the ones that hurt. Part of
    the sweep's validation, so the Python API (`run_sweep`) refuses a mismatch like the CLI does."""
    from quant.sensitivity import searched_calib_method

    searched, used = searched_calib_method(cfg.keep_float_from), calib_method_of(cfg, "onnx")
    if searched is not None and searched != used:
        raise UsageError(f"--keep-float-from {cfg.keep_float_from} was searched with {searched} calibration but the "
                         f"static ONNX cells calibrate with {used}; pass --calib-method {searched} (or rerun "
                         f"python -m quant.sensitivity with --calib-method {used})")


def run_sweep(cfg: BenchConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> list[dict]:
    """Run every planned cell (or reuse its stored record); returns one record per cell."""
    from zoo import data as zdata

    models, variants, backends = _planned(cfg)
    card = zdata.load_card(cfg.data)
    sizes, batches = default_sizes(cfg, card), cfg.batches()
    _check(cfg, sizes, batches, card.task)
    # Fail fast on a missing data root before any training or export work.
    zdata.build_dataset(cfg.data, root=cfg.data_root, split=cfg.split)
    sweep = _Sweep(cfg, log)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    for p in stale_temporaries(cfg.out):
        log(f"removed {p.name}, a half-written record of a killed sweep")
    stored = read_records(cfg.out) if not cfg.force else []
    done_ok = latest_by_key(stored, status="ok")
    done_skipped = latest_by_key(stored, status="skipped")
    env = environment()
    records: list[dict] = []
    images_subset = str(cfg.max_images) if cfg.max_images else "all"
    options_base = {"cache_dir": str(artifacts_dir(cfg.artifacts) / "trt"), "dla_core": cfg.dla_core,
                    "trt_precision": cfg.trt_precision, "workspace_mb": cfg.trt_workspace_mb}
    for model in models:
        prep = prepare_model(cfg, model)
        for hw in sizes:
            for batch in batches:
                for variant in variants:
                    for backend in backends:
                        bcls = get_backend(backend)
                        rec = {
                            "schema": SCHEMA, "task": card.task, "model": prep.model, "variant": variant,
                            "backend": backend,
                            "precision": precision_of(bcls, variant, options_base),
                            "device": device_of(bcls, options_base),
                            "dataset": cfg.data, "split": cfg.split, "input_hw": list(hw), "batch": batch,
                            "threads": cfg.threads, "profile": cfg.profile, "profile_id": sweep.profile_id,
                            "images_subset": images_subset, "weights_sha256": prep.weights_sha256,
                        }
                        rec["quant_config"] = quant_config(cfg, variant, backend)
                        if prep.group is not None:  # instance cells: PQ depends on the grouping settings
                            rec["postprocess_id"] = GroupConfig.from_dict(prep.group).digest()
                        # Only static PTQ calibrates; QAT learns its ranges, dynamic PTQ has none.
                        rec["calib_method"] = (calib_method_of(cfg, calib_runtime(backend))
                                               if variant == "static" else None)
                        ok, reason = sweep.availability(backend)
                        if ok:
                            ok, reason = variant_support(variant, bcls, cfg)
                        if ok and variant == "qat" and not cfg.force:
                            stored_qat = _stored_qat_record(prep, cfg, rec, stored)
                            if stored_qat is not None:
                                log(f"cell {short_id(rec)}: stored ({Path(stored_qat['_path']).name}; its QAT "
                                    "checkpoint is not cached here); --force fine-tunes anew and reruns it")
                                records.append({**stored_qat, "_reused": True})
                                continue
                        if ok and variant == "qat":
                            # The fine-tuned checkpoint is part of the cell's identity.
                            try:
                                rec["quant_config"] += "-" + sha256_file(prep.qat_checkpoint(cfg, log))[:12]
                            except Exception:  # noqa: BLE001 - raised again (cached) when the cell prepares
                                pass           # its artifact, which makes it a failed record
                        rec["cell_key"] = key = cell_key(rec)
                        if key in done_ok or (key in done_skipped and not ok):
                            old = done_ok.get(key) or done_skipped[key]
                            log(f"cell {short_id(rec)}: stored ({old['status']}, {Path(old['_path']).name}); "
                                "--force reruns it")
                            records.append({**old, "_reused": True})
                            continue
                        records.append(_run_one(sweep, prep, rec, hw, batch, variant, backend, ok, reason,
                                                options_base, env))
    return records


def _stored_qat_record(prep: Prepared, cfg: BenchConfig, rec: dict, stored: list[dict]) -> dict | None:
    """The newest ok record of this QAT cell made from any fine-tuning of these FP32 weights with
    today's float layout, when no usable QAT checkpoint is cached (the artifact cache is per
    machine; the results folder travels). None when a checkpoint is cached: its own key decides."""
    candidates = [r for r in stored if r.get("status") == "ok" and r.get("variant") == "qat"
                  and str(r.get("quant_config") or "").startswith(rec["quant_config"] + "-")
                  and cell_key({**r, "quant_config": rec["quant_config"]}) == cell_key(rec)
                  and prep.stored_qat_fits((r.get("artifact") or {}).get("quant") or {})]
    if not candidates or prep.cached_qat_checkpoint(cfg)[0] is not None:
        return None
    return max(candidates, key=lambda r: str(r.get("timestamp") or ""))


def _run_one(sweep: _Sweep, prep: Prepared, rec: dict, hw: tuple[int, int], batch: int, variant: str,
             backend: str, ok: bool, reason: str, options: dict, env: dict) -> dict:
    cfg, log = sweep.cfg, sweep.log
    bcls = get_backend(backend)
    t0 = time.time()
    artifact = reference = ev = None
    if not ok:
        log(f"cell {short_id(rec)}: skipped ({reason})")
        result = {"status": "skipped", "error": reason}
    else:
        try:
            artifact = prep.variant_artifact(cfg, bcls.artifact_kind, variant, backend, hw, batch, log)
        except Exception as exc:  # noqa: BLE001 - an export that fails is this cell's failure, not the sweep's
            artifact = None
            first = (str(exc).strip().splitlines() or [""])[0]
            result = {"status": "failed", "error": f"preparing the {bcls.artifact_kind} artifact failed: "
                                                   f"{type(exc).__name__}: {first}"[:500]}
    if ok and artifact is not None:
        ev = sweep.evalset(hw)
        base_spec = {
            "task": prep.task,
            "model": prep.model, "variant": variant, "backend": backend, "dataset": cfg.data, "split": cfg.split,
            "input_hw": list(hw), "batch": batch, "threads": cfg.threads, "artifact": artifact,
            "preprocess": prep.preprocess, "num_classes": prep.num_classes,
            "ignore_index": _card(cfg).ignore_index, "classes": list(_card(cfg).classes),
            "evalset": {"labels": ev["labels"], "images": ev["images"]},
            "timing_images": cfg.timing_images, "timing_profile": dataclasses.asdict(sweep.profile),
            "backend_options": options, "cell_id": short_id(rec),
        }
        if prep.group is not None:
            base_spec["group"] = prep.group
        if prep.task == "detection":
            from zoo.det.postprocess import NMS_PRESETS

            base_spec["nms"] = {name: NMS_PRESETS[name].as_dict() for name in ("map", "deploy")}
            rec["protocol"] = det_protocol(hw)
        reference = sweep.reference(prep, hw, base_spec)
        spec = {**base_spec, "reference": reference if reference.get("status") == "ok" else None}
        log(f"cell {short_id(rec)}: measuring in a separate process ...")
        load_before, busy = _load_average(), busy_cores()
        if busy is not None and busy > (os.cpu_count() or 1) - cfg.threads + 0.5:
            log(f"  warning: other processes keep {busy:.1f} of {os.cpu_count()} cores busy: they compete "
                "with this cell, so its timings are not trustworthy (stop them for reportable numbers)")
        t0 = time.time()
        result = run_cell_process(spec, cfg.timeout)
        rec["machine_load"] = {"busy_cores_before": busy, "load_1m_before": load_before,
                               "load_1m_after": _load_average(), "cores": os.cpu_count()}
        if prep.task == "detection" and result.get("status") == "ok":
            try:  # scored here, outside the measured process (see the module docstring)
                result["metrics"] = sweep.score(ev, result.pop("_detections"), reference)
            except Exception as exc:  # noqa: BLE001 - a cell whose output cannot be scored failed
                result = {**result, "status": "failed", "metrics": {},
                          "error": f"scoring the detections failed: {type(exc).__name__}: {exc}"[:500]}
        result.pop("_detections", None)
    rec.update(_fill(rec, result, prep, hw, batch, artifact, reference, ev, cfg))
    rec.update(cell_wall_s=time.time() - t0, env=env, timestamp=now_iso())
    path = sweep.write(rec)
    rec["_path"] = str(path)
    status = rec["status"] if rec["status"] == "ok" else f"{rec['status']}: {rec['error']}"
    log(f"  -> {status} ({path})")
    return rec


def busy_cores(interval_s: float = 1.0) -> float | None:
    """How many cores are busy right now, measured over `interval_s` while the sweep waits: with
    nothing else running it is ~0, so it counts other processes only. (The 1-minute load average,
    also recorded, counts the sweep's own export and calibration work of the last minute as well,
    which made it warn before nearly every cell of a sequential sweep.)"""
    try:
        import psutil

        return psutil.cpu_percent(interval=interval_s) / 100.0 * (psutil.cpu_count() or 1)
    except Exception:  # noqa: BLE001 - a missing /proc: no measurement, no warning
        return None


def _load_average() -> float | None:
    """The 1-minute load average: other work on the cores skews a cell's timings (recorded)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _card(cfg: BenchConfig):
    from zoo import data as zdata

    return zdata.load_card(cfg.data)


def _fill(rec: dict, result: dict, prep: Prepared, hw: tuple[int, int], batch: int, artifact: dict | None,
          reference: dict | None, ev: dict | None, cfg: BenchConfig) -> dict:
    """The record's measured fields from the cell's result (absent ones are None/empty)."""
    status = result.get("status", "failed")
    lat = result.get("latency_ms") or {}
    e2e = result.get("e2e_latency_ms") or {}
    metrics = dict(result.get("metrics") or {})
    ref_ok = bool(reference and reference.get("status") == "ok")
    detection = prep.task == "detection"
    instance = prep.task == "instance"
    if metrics and instance:  # PQ / mIoU deltas and parity (bench.instances)
        from bench.instances import fill_metrics

        metrics = fill_metrics(metrics, reference if ref_ok else None)
    elif metrics and detection:
        metrics.setdefault("box_agreement", None)
        for name in ("map50_95", "map50"):
            ref_v = reference["metrics"].get(name) if ref_ok else None
            metrics[f"{name}_delta_vs_fp32_torch"] = (
                metrics[name] - ref_v if ref_v is not None and metrics.get(name) is not None else None)
    elif metrics:
        metrics.setdefault("pixel_agreement", None)
        ref_miou = reference["metrics"].get("miou") if ref_ok else None
        metrics["miou_delta_vs_fp32_torch"] = (
            metrics["miou"] - ref_miou if ref_miou is not None and metrics.get("miou") is not None else None)

    def per_s(stats: dict, n: int) -> float | None:
        return 1000.0 * n / stats["median"] if stats.get("median") else None

    build = result.get("build") or {}
    out = {
        "status": status, "error": result.get("error"),
        "metrics": metrics, "images": result.get("images"),
        "size_mb": artifact["size_mb"] if artifact else None,
        "artifact_bytes": artifact["bytes"] if artifact else None,
        "params": prep.params, "gmacs": prep.gmacs_at(hw),
        "latency_ms": lat, "e2e_latency_ms": e2e,
        "fps": per_s(lat, 1), "e2e_fps": per_s(e2e, 1),
        "images_per_s": per_s(lat, batch), "e2e_images_per_s": per_s(e2e, batch),
        "unstable": is_unstable(lat, cfg.cv_threshold) if lat else None,
        "e2e_unstable": is_unstable(e2e, cfg.cv_threshold) if e2e else None,
        "cv_threshold": cfg.cv_threshold,
        "gpu_compute_ms": result.get("gpu_compute_ms"),
        "load_s": result.get("load_s"), "build_s": build.get("build_s"),
        "first_inference_ms": result.get("first_inference_ms"),
        "peak_rss_mb": result.get("peak_rss_mb"), "baseline_rss_mb": result.get("baseline_rss_mb"),
        "rss_delta_mb": result.get("rss_delta_mb"), "peak_reset": result.get("peak_reset"),
        "gpu_memory": result.get("gpu_memory"),
        "imports_torch": result.get("imports_torch"),
        "artifact": ({k: artifact[k] for k in ("kind", "path", "sha256", "bytes", "size_mb", "quant", "dynamic_quant", "fx_int8",
                                                                          "file_bytes", "size_basis", "build_kwargs")
                      if k in artifact} if artifact else None),
        "weights": {"path": prep.weights_path, "sha256": prep.weights_sha256, **prep.weights_meta},
        "reference": ({"status": "ok", "path": reference["path"], **reference["metrics"]}
                      if ref_ok and (detection or instance) else
                      {"status": "ok", "path": reference["path"], "miou": reference["metrics"]["miou"]}
                      if ref_ok else ({"status": "failed", "error": reference.get("error")} if reference else None)),
        "data": ({"sha256": ev["sha256"], "images": ev["n"], "fingerprint": ev["fingerprint"]} if ev else None),
        "preprocess": prep.preprocess,
        "timing_profile": result.get("timing_profile"), "e2e_timing_profile": result.get("e2e_timing_profile"),
        "runtime": {**(result.get("runtime") or {}), **({"build": build} if build else {})},
        "samples_ms": result.get("samples_ms", []), "e2e_samples_ms": result.get("e2e_samples_ms", []),
    }
    if detection:
        post = result.get("postprocess_latency_ms") or {}
        out.update({
            # post-processing (NMS + boxes back) and pre-processing (letterbox + normalise), each
            # timed inside the end-to-end iterations; the model-only part is `latency_ms`
            "postprocess_latency_ms": post, "postprocess_samples_ms": result.get("postprocess_samples_ms", []),
            "preprocess_latency_ms": result.get("preprocess_latency_ms") or {},
            "postprocess_share_of_e2e": (post["median"] / e2e["median"]
                                         if post.get("median") is not None and e2e.get("median") else None),
            # memory: `peak_rss_mb` is the model phase (see bench/cell.py); this is the whole cell
            "peak_rss_e2e_mb": result.get("peak_rss_e2e_mb"), "rss_delta_e2e_mb": result.get("rss_delta_e2e_mb"),
            "imports_torch_model_phase": result.get("imports_torch_model_phase"),
            "torch_import_s": result.get("torch_import_s"), "postprocess_threads": result.get("postprocess_threads"),
            "detections": result.get("detections"),
        })
    if instance:
        from bench.instances import record_fields

        out.update(record_fields(result, artifact, hw))
    if "traceback" in result:
        out["traceback"] = result["traceback"]
    return out


def markdown_table(records: list[dict]) -> str:
    from tabulate import tabulate

    several_sizes = len({tuple(r.get("input_hw") or ()) for r in records}) > 1
    batched = any((r.get("batch") or 1) > 1 for r in records)
    if any(r.get("task") == "detection" for r in records):
        return _det_markdown_table(records, several_sizes, batched)
    if any(r.get("task") == "instance" for r in records):
        from bench.instances import markdown_table as instance_table

        return instance_table(records, several_sizes, batched)
    rows = []
    for r in records:
        lat = r.get("latency_ms") or {}
        e2e = r.get("e2e_latency_ms") or {}
        m = r.get("metrics") or {}
        f = fmt_cell
        row = _row_head(r, several_sizes, batched) + [
                f(100 * m["miou"], ".2f") if isinstance(m.get("miou"), (int, float)) else "-",
                f(100 * m["pixel_agreement"], ".2f") if isinstance(m.get("pixel_agreement"), (int, float)) else "-",
                f(r.get("size_mb"), ".2f"), f(lat.get("median"), ".1f"), f(lat.get("p90"), ".1f"),
                f(lat.get("cv"), ".3f"), f(r.get("images_per_s") if batched else r.get("fps"), ".1f"),
                f(e2e.get("median"), ".1f"), f(r.get("peak_rss_mb"), ".0f"), f(r.get("rss_delta_mb"), ".0f")]
        rows.append(row)
    headers = ["model", "variant", "backend"] + (["input"] if several_sizes else []) + (["batch"] if batched else [])
    headers += ["status", "mIoU %", "agree %", "size MB", "median ms", "p90 ms", "CV",
                "images/s" if batched else "FPS", "e2e median ms", "peak RSS MB", "RSS delta MB"]
    return tabulate(rows, headers=headers, tablefmt="github")


def fmt_cell(v, fmt: str) -> str:
    """A number for a summary table, or "-" when the record has none."""
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def fmt_pct(v) -> str:
    """A fraction as a percentage with two decimals, or "-"."""
    return fmt_cell(100 * v, ".2f") if isinstance(v, (int, float)) else "-"


def _row_head(r: dict, several_sizes: bool, batched: bool) -> list:
    """The columns every summary table starts with: cell identity and its status (with the reason)."""
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {_short(r.get('error'))}"
    if r["status"] == "ok" and r.get("unstable"):
        status = "ok (unstable)"
    row = [r["model"], r["variant"], r["backend"]]
    if several_sizes:
        row.append("x".join(map(str, r.get("input_hw") or [])))
    if batched:
        row.append(r.get("batch", 1))
    return row + [status]


def _det_markdown_table(records: list[dict], several_sizes: bool, batched: bool) -> str:
    from tabulate import tabulate

    f, pct = fmt_cell, fmt_pct
    rows = []
    for r in records:
        lat, e2e = r.get("latency_ms") or {}, r.get("e2e_latency_ms") or {}
        post = r.get("postprocess_latency_ms") or {}
        m = r.get("metrics") or {}
        row = _row_head(r, several_sizes, batched) + [pct(m.get("map50_95")), pct(m.get("map50")), pct(m.get("box_agreement")),
                f(r.get("size_mb"), ".2f"), f(lat.get("median"), ".1f"), f(lat.get("p90"), ".1f"),
                f(lat.get("cv"), ".3f"), f(r.get("images_per_s") if batched else r.get("fps"), ".1f"),
                f(post.get("median"), ".2f"), f(e2e.get("median"), ".1f"), f(r.get("peak_rss_mb"), ".0f"),
                f(r.get("peak_rss_e2e_mb"), ".0f")]
        rows.append(row)
    headers = ["model", "variant", "backend"] + (["input"] if several_sizes else []) + (["batch"] if batched else [])
    headers += ["status", "mAP50-95 %", "mAP50 %", "box agree %", "size MB", "median ms", "p90 ms", "CV",
                "images/s" if batched else "FPS", "NMS ms", "e2e median ms", "peak RSS MB", "e2e peak RSS MB"]
    return tabulate(rows, headers=headers, tablefmt="github")


def _short(text: str | None, n: int = 70) -> str:
    text = str(text or "")
    return text if len(text) <= n else text[: n - 3] + "..."


def footer(cfg: BenchConfig, records: list[dict]) -> str:
    if not records:
        return ""
    r, env = records[0], records[0]["env"]
    sizes = ", ".join(sorted({"x".join(map(str, x.get("input_hw") or [])) for x in records}))
    batches = ", ".join(sorted({str(x.get("batch", 1)) for x in records}))
    if r.get("task") == "detection":
        what = ("latency: model only (median, p90); NMS = post-processing (deploy preset: conf 0.25, IoU 0.45) "
                "+ boxes back; e2e = letterbox+normalise+model+NMS; peak RSS = model phase (before ONNX Runtime "
                "cells import torch for NMS), e2e peak RSS = whole cell")
    elif any(x.get("task") == "instance" for x in records):
        what = ("latency: model only (median, p90); post = argmax+centre NMS+grouping (numpy), timed inside each e2e "
                "iteration; e2e = resize+normalise+model+post; ONNX Runtime workers stop spinning when a run returns "
                "(session.force_spinning_stop)")
    else:
        what = "latency: model only (median, p90), e2e = resize+normalise+model+argmax"
    return (f"{cfg.data}/{cfg.split}, {sizes}, batch {batches}, {cfg.threads} threads, profile {r.get('profile_id') or cfg.profile}; "
            f"CPU {env['cpu']['model']}; torch {env['torch']}, onnxruntime {env['onnxruntime']}; "
            f"commit {(env['git']['commit'] or 'none')[:10]}{' (dirty)' if env['git']['dirty'] else ''}; " + what)


def sweep_summary(records: list[dict], wall_s: float) -> str:
    """One line on what the sweep did and how long it took: cells measured (and how long their
    processes ran), reused from --out, skipped and failed, and the wall time of the whole sweep,
    which includes preparation the cells do not (training, export, calibration, references)."""
    fresh = [r for r in records if not r.get("_reused")]
    cells_s = sum(float(r.get("cell_wall_s") or 0.0) for r in fresh)
    counts = {s: sum(r.get("status") == s for r in fresh) for s in ("ok", "skipped", "failed")}
    reused = len(records) - len(fresh)
    return (f"sweep: {len(records)} cells in {wall_s / 60:.1f} min wall: {counts['ok']} measured "
            f"({cells_s / 60:.1f} min in cell processes), {reused} stored (reused), "
            f"{counts['skipped']} skipped, {counts['failed']} failed")


def summary_as_dict(records: list[dict]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("samples_ms", "e2e_samples_ms", "env")} for r in records]
