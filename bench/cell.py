"""One benchmark cell in its own process: `python -m bench.cell SPEC.json RECORD.json`.

The parent (bench.runner) prepares artifacts; this process only loads one artifact on one
backend and measures it, so its memory high-water mark and timings belong to that cell alone.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path


def _resized(sample, hw: tuple[int, int]):
    """The sample at the benchmark's input size: bilinear image, nearest-neighbour label."""
    import numpy as np
    from PIL import Image

    h, w = hw
    image = np.asarray(Image.fromarray(sample.image).resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(sample.label).resize((w, h), Image.NEAREST))
    return type(sample)(image=image, label=label, name=sample.name)


def run_cell(spec: dict) -> dict:
    import numpy as np

    from bench.backends import get_backend
    from bench.memory import PeakMemory
    from bench.timing import PROFILES, measure
    from zoo import data as zdata
    from zoo.metrics import ConfusionMatrix

    card = zdata.load_card(spec["dataset"])
    pre = zdata.Preprocess.from_dict(spec["preprocess"])
    h, w = spec["input_hw"]
    dataset = zdata.build_dataset(spec["dataset"], root=spec.get("data_root"), split=spec["split"])
    if spec.get("max_images"):
        indices = range(min(len(dataset), spec["max_images"]))
    else:
        indices = range(len(dataset))
    samples = []
    for i in indices:  # decoded before the memory baseline: the data set is not the model's memory
        s = dataset[i]
        if s.image.shape[:2] != (h, w):
            s = _resized(s, (h, w))
        samples.append(s)
    timing_inputs = [pre.batch_numpy([s.image]) for s in samples[: spec.get("timing_images", 16)]]

    backend_cls = get_backend(spec["backend"])
    ok, reason = backend_cls.available()
    if not ok:
        return {"status": "skipped", "error": reason}

    mem = PeakMemory()
    backend = backend_cls()
    t0 = time.perf_counter()
    backend.load(spec["artifact"], threads=spec["threads"])
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.infer(timing_inputs[0])
    first_ms = (time.perf_counter() - t0) * 1000

    conf = ConfusionMatrix(card.num_classes, card.ignore_index)
    for s in samples:
        logits = backend.infer(pre.batch_numpy([s.image]))
        conf.update(np.asarray(logits).argmax(1)[0], s.label)
    scores = conf.scores(card.classes)

    profile = PROFILES[spec["profile"]]
    overrides = {k: v for k, v in (spec.get("timing_overrides") or {}).items() if v is not None}
    if overrides:
        # An explicit override also drops the profile's time floors, so short smoke runs stay short.
        min_time = overrides.pop("min_time_s", 0.0)
        profile = dataclasses.replace(profile, name="custom", warmup_s=0.0, min_time_s=min_time, **overrides)
    timing = measure(backend.infer, timing_inputs, profile)
    memory = mem.stop()
    stats = timing["stats"]
    return {
        "status": "ok", "error": None,
        "metrics": scores.as_dict(), "images": len(samples),
        "latency_ms": stats, "timing_profile": dataclasses.asdict(profile), "fps": 1000.0 / stats["median"] if stats["median"] else None,
        "samples_ms": timing["samples_ms"], "load_s": load_s, "first_inference_ms": first_ms,
        **memory,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    try:
        result = run_cell(spec)
    except Exception as exc:  # noqa: BLE001 - failures are data: the record carries them
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    from zoo.io import write_json

    write_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
