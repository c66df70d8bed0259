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
from pathlib import Path

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


def run_cell(spec: dict) -> dict:
    import numpy as np

    from bench import imageops
    from bench.backends import get_backend
    from bench.memory import PeakMemory
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
    n_timing = max(1, min(len(images), int(spec.get("timing_images", 16))))
    n_batches = max(1, math.ceil(n_timing / batch))
    e2e_inputs = [[images[(j * batch + k) % n_timing] for k in range(batch)] for j in range(n_batches)]
    model_inputs = [pre(g) for g in e2e_inputs]

    backend_cls = get_backend(spec["backend"])
    ok, reason = backend_cls.available()
    if not ok:
        return {"status": "skipped", "error": reason}
    backend = backend_cls()
    options = {**(spec.get("backend_options") or {}), "variant": spec["variant"],
               "int8": spec["variant"] != "fp32"}
    build = None
    if hasattr(backend, "prepare"):  # TensorRT engine build: its memory is not the runtime's
        build = backend.prepare(spec["artifact"], options=options)

    mem = PeakMemory()
    t0 = time.perf_counter()
    backend.load(spec["artifact"], threads=int(spec["threads"]), options=options)
    load_s = time.perf_counter() - t0
    maybe_fault(cell_id)
    t0 = time.perf_counter()
    backend.infer(model_inputs[0])
    first_ms = (time.perf_counter() - t0) * 1000

    # -- accuracy (and parity) through the end-to-end pipeline: pixels -> mask --------------
    conf = ConfusionMatrix(int(spec["num_classes"]), int(spec.get("ignore_index", 255)))
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
    # The model is warm by now; the end-to-end loop only needs its own code paths warmed.
    e2e_profile = TimingProfile(name=profile.name + "-e2e", warmup_iters=max(1, profile.warmup_iters // 10),
                                warmup_s=0.0, iters=profile.iters, min_time_s=profile.min_time_s,
                                trials=profile.trials)

    def end_to_end(group: list) -> object:
        return imageops.postprocess(backend.infer(pre(group)), hw)

    e2e = measure(end_to_end, e2e_inputs, e2e_profile)
    memory = mem.stop()
    from bench.timing import summarize

    return {
        "status": "ok", "error": None, "metrics": scores, "images": len(images),
        "latency_ms": model["stats"], "samples_ms": model["samples_ms"],
        "e2e_latency_ms": e2e["stats"], "e2e_samples_ms": e2e["samples_ms"],
        "gpu_compute_ms": summarize(device_ms) if device_ms else None,
        "timing_profile": spec["timing_profile"], "e2e_timing_profile": e2e_profile.__dict__,
        "load_s": load_s, "first_inference_ms": first_ms, "build": build,
        "gpu_memory": backend.gpu_memory() if hasattr(backend, "gpu_memory") else None,
        "runtime": backend.info() if hasattr(backend, "info") else {},
        "imports_torch": "torch" in sys.modules,
        **memory,
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
