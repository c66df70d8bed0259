"""One benchmark cell in its own process: `python -m bench.cell SPEC.json RESULT.json`.

The parent (bench.runner) prepares every artifact (weights, ONNX, the evaluation labels, the
FP32 reference masks); this process only loads one artifact on one backend and measures it,
so its memory high-water mark and timings belong to that cell alone.

It imports only what its backend needs: numpy, Pillow and the runtime. In particular an ONNX
Runtime cell never imports torch (the record says so in `imports_torch`), because torch alone
adds ~600 MB to a process's resident memory and would make ORT's peak RSS look that much worse.

Order of work:
    decode the validation images and the labels (before the memory baseline: data, not model)
    [tensorrt] build the engine if it is not cached (`build_s`; also before the baseline)
    baseline RSS -> load (`load_s`) -> first inference (`first_inference_ms`)
    accuracy pass over every image through the end-to-end pipeline (pixels -> mask)
    model-only timing (`latency_ms`), then end-to-end timing (`e2e_latency_ms`)
    peak RSS (high-water mark since the baseline)

`mode: "reference"` runs the same accuracy pass and saves the argmax masks (the PyTorch FP32
reference of bench.runner) instead of timing.

Detection cells (`task: "detection"`, `run_det_cell`) differ in three ways:

* Images are letterboxed to the cell's one fixed input size (`bench.imageops.letterbox`).
* NMS is `torchvision.ops.batched_nms` (through `zoo.det.postprocess`; the project does not
  hand-write NMS), so post-processing needs torch. The cell therefore measures the *model phase*
  first, with torch not imported in ONNX Runtime / TensorRT-free cells: baseline RSS -> load ->
  first inference -> model-only timing -> `peak_rss_mb` (the high-water mark of exactly that).
  Only then does it import torch (`torch_import_s`) and run the accuracy pass, and the end-to-end
  timing; the high-water mark at the very end is `peak_rss_e2e_mb`. Both are honest: the first
  is what the runtime and the model cost, the second what this Python deployment (with torch for
  NMS) costs. `imports_torch_model_phase` says whether torch was loaded during the model phase.
* The cell does not score: it writes its detections (two NMS presets: "map" for COCO mAP,
  "deploy" for parity) to `detections_out` (.npz), and the parent scores them with pycocotools
  and matches them against the PyTorch FP32 reference. That keeps pycocotools and the ground
  truth out of the measured process, and a few hundred boxes per image are small to hand over.
  Post-processing time (NMS + mapping boxes back) is measured inside each end-to-end iteration
  and reported on its own (`postprocess_latency_ms`), as is pre-processing (`preprocess_latency_ms`).

Instance cells (`task: "instance"`) are `bench.instances.run_instance_cell`: a segmentation cell
whose end-to-end pipeline adds centre NMS + grouping and whose accuracy is PQ (see that module).

Test hook: EDGEZOO_BENCH_FAULT="ACTION:PATTERN[,ACTION:PATTERN...]" makes a cell whose id
(model/variant/backend/HxW/bN, or reference/model/HxW) matches the fnmatch PATTERN fail right
after loading: ACTION is segv (a real segmentation fault), abort, exit (os._exit(139)), hang or
raise. bench.runner must turn each into a failed record and go on.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULT_ENV = "EDGEZOO_BENCH_FAULT"


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to SIGKILL this process when the sweep that started it dies (no orphans
    measuring into a void after a killed sweep)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(3)  # the parent died before prctl took effect


def maybe_fault(cell_id: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    from fnmatch import fnmatchcase

    for item in spec.split(","):
        action, _, pattern = item.strip().partition(":")
        if not action or not fnmatchcase(cell_id, pattern or "*"):
            continue
        sys.stderr.write(f"[fault injection] {action} in {cell_id}\n")
        sys.stderr.flush()
        if action == "segv":
            import ctypes

            ctypes.string_at(0)  # dereferences NULL: SIGSEGV
        elif action == "abort":
            os.abort()
        elif action == "exit":
            os._exit(139)
        elif action == "hang":
            while True:
                time.sleep(60)
        elif action == "raise":
            raise RuntimeError(f"fault injected in {cell_id}")


def _groups(n: int, batch: int) -> list[list[int]]:
    return [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]



def _open_backend(spec: dict):
    """The cell's backend instance, its load options and the engine build info (TensorRT builds
    happen here, before the memory baseline: build memory is not the runtime's); a skipped
    result dict when the backend is not usable."""
    from bench.backends import get_backend

    backend_cls = get_backend(spec["backend"])
    ok, reason = backend_cls.available()
    if not ok:
        return {"status": "skipped", "error": reason}
    backend = backend_cls()
    options = {**(spec.get("backend_options") or {}), "variant": spec["variant"],
               "int8": spec["variant"] != "fp32"}
    build = backend.prepare(spec["artifact"], options=options) if hasattr(backend, "prepare") else None
    return backend, options, build

@dataclass
class LoadedCell:
    """A cell's backend after `open_and_load`: the memory tracker started before loading, load and
    first-inference times, the TensorRT build info."""

    backend: Any
    options: dict
    build: Any
    mem: Any
    load_s: float
    first_ms: float


def open_and_load(spec: dict, first_input, cell_id: str, threads: int):
    """`_open_backend`, then the memory baseline, load and first inference (timed apart from the
    steady state); a skipped result dict when the backend is not usable. Shared by every cell kind."""
    from bench.memory import PeakMemory

    opened = _open_backend(spec)
    if isinstance(opened, dict):
        return opened  # skipped: the backend is not usable here
    backend, options, build = opened
    mem = PeakMemory()
    t0 = time.perf_counter()
    backend.load(spec["artifact"], threads=threads, options=options)
    load_s = time.perf_counter() - t0
    maybe_fault(cell_id)
    t0 = time.perf_counter()
    backend.infer(first_input)
    first_ms = (time.perf_counter() - t0) * 1000
    return LoadedCell(backend, options, build, mem, load_s, first_ms)


def timing_batches(images: list, spec: dict, batch: int) -> list[list]:
    """The end-to-end inputs every cell times: the first `timing_images` images (default 16)
    cycled into batches of `batch`, held in memory."""
    n_timing = max(1, min(len(images), int(spec.get("timing_images", 16))))
    n_batches = max(1, math.ceil(n_timing / batch))
    return [[images[(j * batch + k) % n_timing] for k in range(batch)] for j in range(n_batches)]


def measure_split_e2e(end_to_end, e2e_inputs, profile, split_ns: list) -> tuple[dict, list, list, Any]:
    """Time the end-to-end loop of a warm model; `end_to_end` appends (pre ns, post ns) per call
    to `split_ns`. Returns the measurement, the pre- / post-processing milliseconds of the timed
    (not warm-up) calls and the end-to-end timing profile."""
    from bench.timing import measure

    e2e_profile = e2e_profile_of(profile)
    e2e = measure(end_to_end, e2e_inputs, e2e_profile)
    timed = split_ns[len(split_ns) - int(e2e["stats"]["n"]):]  # the warm-up calls come first
    return e2e, [a / 1e6 for a, _ in timed], [b / 1e6 for _, b in timed], e2e_profile


def e2e_profile_of(profile):
    """The end-to-end loop's profile: the model is warm by then, so only the loop's own code
    paths need warming (max(1, warm-up iterations / 10), no warm-up time floor)."""
    from bench.timing import TimingProfile

    return TimingProfile(name=profile.name + "-e2e", warmup_iters=max(1, profile.warmup_iters // 10),
                         warmup_s=0.0, iters=profile.iters, min_time_s=profile.min_time_s, trials=profile.trials)


def timing_fields(spec: dict, backend, model: dict, e2e: dict, e2e_profile, device_ms: list,
                  pre_ms: list | None = None, post_ms: list | None = None) -> dict:
    """The timing part of every cell's result: model-only and end-to-end statistics and raw
    samples, pre- / post-processing (when the cell splits its end-to-end calls:
    `measure_split_e2e`), GPU-only time, the profiles, the backend's GPU memory and runtime
    details, and whether torch was imported by the end of the measurement. One place, so that
    the cell kinds cannot drift apart in what these record fields mean."""
    from bench.timing import summarize

    fields = {"latency_ms": model["stats"], "samples_ms": model["samples_ms"],
              "e2e_latency_ms": e2e["stats"], "e2e_samples_ms": e2e["samples_ms"]}
    if post_ms is not None:
        fields.update(postprocess_latency_ms=summarize(post_ms), postprocess_samples_ms=post_ms,
                      preprocess_latency_ms=summarize(pre_ms))
    fields.update({
        "gpu_compute_ms": summarize(device_ms) if device_ms else None,
        "timing_profile": spec["timing_profile"], "e2e_timing_profile": e2e_profile.__dict__,
        "gpu_memory": backend.gpu_memory() if hasattr(backend, "gpu_memory") else None,
        "runtime": backend.info() if hasattr(backend, "info") else {},
        "imports_torch": "torch" in sys.modules,
    })
    return fields


def run_cell(spec: dict) -> dict:
    if spec.get("task") == "detection":
        return run_det_cell(spec)
    if spec.get("task") == "instance":  # post-processing and PQ: bench.instances
        from bench.instances import run_instance_cell

        return run_instance_cell(spec)
    import numpy as np

    from bench import imageops
    from bench.metrics import Agreement, ConfusionMatrix
    from bench.timing import TimingProfile, measure

    mode = spec.get("mode", "cell")
    hw = (int(spec["input_hw"][0]), int(spec["input_hw"][1]))
    batch = int(spec.get("batch", 1))
    cell_id = spec.get("cell_id", "cell")

    # -- data, decoded before the memory baseline -------------------------------------------
    evalset = spec["evalset"]
    with np.load(evalset["labels"]) as z:
        labels = z["labels"]
    images = [imageops.read_rgb(p) for p in evalset["images"]]
    if len(images) != len(labels) or not images:
        raise RuntimeError(f"evaluation set {evalset['labels']} lists {len(images)} images for {len(labels)} labels")
    ref_masks = None
    ref = spec.get("reference") or {}
    if mode == "cell" and ref.get("path"):
        with np.load(ref["path"]) as z:
            ref_masks = z["masks"]
        if ref_masks.shape[0] != len(images):
            raise RuntimeError(f"reference {ref['path']} has {ref_masks.shape[0]} masks for {len(images)} images")
    pre = imageops.Preprocessor(spec["preprocess"], hw)
    e2e_inputs = timing_batches(images, spec, batch)
    model_inputs = [pre(g) for g in e2e_inputs]

    loaded = open_and_load(spec, model_inputs[0], cell_id, int(spec["threads"]))
    if isinstance(loaded, dict):
        return loaded
    backend, build, mem, load_s, first_ms = loaded.backend, loaded.build, loaded.mem, loaded.load_s, loaded.first_ms

    # -- accuracy (and parity) through the end-to-end pipeline: pixels -> mask --------------
    # The dataset's classes, not the network's outputs: an official 12-output CamVid model's void
    # channel is a wrong prediction, not a 12th class whose IoU of 0 would enter the mean.
    conf = ConfusionMatrix(len(spec.get("classes") or ()) or int(spec["num_classes"]), int(spec.get("ignore_index", 255)))
    agree = Agreement()
    masks = None
    for idx in _groups(len(images), batch):
        group = [images[i] for i in idx]
        group += [group[-1]] * (batch - len(group))  # static batch: pad, then drop the extra outputs
        out = imageops.postprocess(backend.infer(pre(group)), hw)[: len(idx)]
        for k, i in enumerate(idx):
            conf.update(out[k], labels[i])
            if ref_masks is not None:
                agree.update(out[k], ref_masks[i])
            if mode == "reference":
                if masks is None:
                    masks = np.zeros((len(images), *hw), dtype=out.dtype)
                masks[i] = out[k]
    scores = conf.scores(tuple(spec.get("classes") or ())).as_dict()
    if ref_masks is not None:
        scores["pixel_agreement"] = agree.value

    if mode == "reference":
        from zoo.io import atomic_path

        with atomic_path(spec["reference_out"]) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, masks=masks)
        return {"status": "ok", "error": None, "metrics": scores, "images": len(images),
                "imports_torch": "torch" in sys.modules, **mem.stop()}

    # -- timing ------------------------------------------------------------------------------
    profile = TimingProfile(**spec["timing_profile"])
    if hasattr(backend, "reset_device_times"):
        backend.reset_device_times()
    model = measure(backend.infer, model_inputs, profile)
    device_ms = list(getattr(backend, "device_times_ms", []) or [])
    e2e_profile = e2e_profile_of(profile)

    def end_to_end(group: list) -> object:
        return imageops.postprocess(backend.infer(pre(group)), hw)

    e2e = measure(end_to_end, e2e_inputs, e2e_profile)
    memory = mem.stop()
    return {
        "status": "ok", "error": None, "metrics": scores, "images": len(images),
        **timing_fields(spec, backend, model, e2e, e2e_profile, device_ms),
        "load_s": load_s, "first_inference_ms": first_ms, "build": build,
        **memory,
    }


def _save_detections(path: str, per_image: dict[str, list]) -> dict[str, int]:
    """Per preset, the images' (K, 6) detections concatenated plus per-image counts, atomically."""
    import numpy as np

    from zoo.io import atomic_path

    arrays = {}
    for name, dets in per_image.items():
        arrays[name] = (np.concatenate(dets).astype(np.float32) if dets else np.zeros((0, 6), np.float32))
        arrays[f"{name}_counts"] = np.asarray([len(d) for d in dets], dtype=np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return {name: int(len(arrays[name])) for name in per_image}


def run_det_cell(spec: dict) -> dict:
    """One detection cell (see the module docstring): model phase, then torch, NMS, accuracy pass,
    end-to-end timing."""
    import numpy as np

    from bench import imageops
    from bench.memory import peak_rss_mb
    from bench.timing import TimingProfile, measure

    mode = spec.get("mode", "cell")
    hw = (int(spec["input_hw"][0]), int(spec["input_hw"][1]))
    batch = int(spec.get("batch", 1))
    threads = int(spec["threads"])
    cell_id = spec.get("cell_id", "cell")

    # -- data, decoded and letterboxed before the memory baseline ----------------------------
    images = [imageops.read_rgb(p) for p in spec["evalset"]["images"]]
    if not images:
        raise RuntimeError("the detection evaluation set lists no images")
    if imageops.cv2 is not None:
        imageops.cv2.setNumThreads(threads)  # the letterbox resize stays within the cell's threads
    pre = imageops.DetPreprocessor(spec["preprocess"], hw)
    e2e_inputs = timing_batches(images, spec, batch)
    model_inputs = [pre(g)[0] for g in e2e_inputs]

    # -- model phase: load, first inference, model-only timing (torch not imported by ORT cells)
    loaded = open_and_load(spec, model_inputs[0], cell_id, threads)
    if isinstance(loaded, dict):
        return loaded
    backend, build, mem, load_s, first_ms = loaded.backend, loaded.build, loaded.mem, loaded.load_s, loaded.first_ms
    profile = TimingProfile(**spec["timing_profile"])
    model = None
    device_ms: list = []
    if mode == "cell":
        if hasattr(backend, "reset_device_times"):
            backend.reset_device_times()
        model = measure(backend.infer, model_inputs, profile)
        device_ms = list(getattr(backend, "device_times_ms", []) or [])
    model_phase = mem.stop()
    torch_in_model_phase = "torch" in sys.modules

    # -- post-processing needs torch: torchvision.ops.batched_nms via zoo.det.postprocess -----
    t0 = time.perf_counter()
    import torch

    from zoo.det.postprocess import NMSConfig, non_max_suppression
    torch_import_s = time.perf_counter() - t0
    # Where torch arrives only now (ONNX Runtime cells), its OpenMP pool would be a second pool
    # next to the runtime's on the same cores, and each pool's spinning workers stall the other
    # (measured, yolov5n 640x640, ORT, 2 threads on 2 cores: NMS 19.6 -> 1.1 ms median, letterbox
    # 11.6 -> ~5 ms, with torch at 2 threads vs 1). NMS on a few thousand candidates gains nothing
    # from threads, so it runs on one; torch cells keep their one pool at the cell's thread count.
    post_threads = threads if torch_in_model_phase else 1
    torch.set_num_threads(post_threads)
    presets = {name: NMSConfig(**cfg) for name, cfg in spec["nms"].items()}  # "map", "deploy"

    def postprocess(out: np.ndarray, infos: list, cfg: "NMSConfig") -> list[np.ndarray]:
        """Decoded predictions (B, N, 5 + nc) -> per image (K, 6) boxes in original pixels."""
        dets = non_max_suppression(torch.as_tensor(out), cfg.conf_thres, cfg.iou_thres, cfg.max_det,
                                   cfg.multi_label, max_nms=cfg.max_nms)
        result = []
        for d, info in zip(dets, infos):
            d = d.numpy().astype(np.float32, copy=True)
            d[:, :4] = imageops.unletterbox_boxes(d[:, :4], info)
            result.append(d)
        return result

    # -- accuracy pass through the end-to-end pipeline: pixels -> boxes (both NMS presets) ----
    per_image: dict[str, list] = {name: [] for name in presets}
    for idx in _groups(len(images), batch):
        group = [images[i] for i in idx]
        group += [group[-1]] * (batch - len(group))  # static batch: pad, then drop the extra outputs
        x, infos = pre(group)
        out = backend.infer(x)[: len(idx)]
        for name, cfg in presets.items():
            per_image[name].extend(postprocess(out, infos[: len(idx)], cfg))
    counts = _save_detections(spec["detections_out"], per_image)
    common = {"status": "ok", "error": None, "metrics": {}, "images": len(images),
              "detections_file": spec["detections_out"], "detections": counts,
              "load_s": load_s, "first_inference_ms": first_ms, "torch_import_s": torch_import_s,
              "postprocess_threads": post_threads,
              "imports_torch_model_phase": torch_in_model_phase, **model_phase}
    if mode == "reference":
        return {**common, "imports_torch": "torch" in sys.modules,
                "peak_rss_e2e_mb": peak_rss_mb(), "rss_delta_e2e_mb": peak_rss_mb() - model_phase["baseline_rss_mb"]}

    # -- end to end: letterbox + normalise, the model, NMS ("deploy" preset) + boxes back -----
    deploy = presets["deploy"]
    split_ns: list[tuple[int, int]] = []

    def end_to_end(group: list) -> object:
        t_0 = time.perf_counter_ns()
        x, infos = pre(group)
        t_1 = time.perf_counter_ns()
        out = backend.infer(x)
        t_2 = time.perf_counter_ns()
        dets = postprocess(out, infos, deploy)
        split_ns.append((t_1 - t_0, time.perf_counter_ns() - t_2))
        return dets

    e2e, pre_ms, post_ms, e2e_profile = measure_split_e2e(end_to_end, e2e_inputs, profile, split_ns)
    end_peak = peak_rss_mb()
    return {
        **common,
        **timing_fields(spec, backend, model, e2e, e2e_profile, device_ms, pre_ms, post_ms),
        "build": build,
        "peak_rss_e2e_mb": end_peak, "rss_delta_e2e_mb": end_peak - model_phase["baseline_rss_mb"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    _die_with_parent(spec.get("parent_pid"))
    try:
        result = run_cell(spec)
    except Exception as exc:  # noqa: BLE001 - failures are data: the record carries them
        from bench.backends import BackendUnavailable

        if isinstance(exc, BackendUnavailable):
            result = {"status": "skipped", "error": str(exc)}
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result = {"status": "failed", "error": f"{type(exc).__name__}: {first}"[:500],
                      "traceback": traceback.format_exc()}
        result["imports_torch"] = "torch" in sys.modules
    from zoo.io import write_json

    write_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
