"""Video measurements: FPS, CPU ms per frame, per-stage times, written as result records.

    python -m video.measure table results/video              # Markdown table of video records
    python -m video.measure decode --source clip.mp4         # decode only: software vs hardware
    python -m video.measure clip --out clip.mp4 --data synthetic --frames 300   # street scenes as a clip
    python -m video.measure clip --out ball.mp4 --size 360x480 --frames 300    # a videotestsrc clip

How each number is made (the pipeline loop is in `video.pipeline`):

* **fps**: frames after the warm-up / wall time from the end of the last warm-up frame to the end
  of the last frame (everything: waiting for the decoder, pre, infer, post, draw, output).
* **cpu_ms_per_frame**: process CPU time (`time.process_time`: user + system of every thread,
  GStreamer's decoding threads and the runtime's threads included) over the same span / frames;
  `cpu_cores_used` = CPU time / wall time.
* **stages_ms** (each with median, p90, p99, mean, std, cv, min, max, n): `decode_wait` = time
  blocked in the appsink pull (decoding runs in GStreamer's streaming threads, concurrently with
  inference; this is the part it did not hide), `pre`, `infer`, `post`, `draw`, `output` (push to
  the sink; `draw` and `output` are absent with `--sink fake`).
  `other` is the rest of each frame's wall time (loop bookkeeping, unmapping, and time the
  process was not scheduled: on a loaded machine it grows).
* **overhead_pct** = 100 x (wall per frame - mean infer) / wall per frame: everything but
  inference, as a share of the frame time. **stage_overhead_pct** = the same share from the stage
  medians (non-infer stage medians / all stage medians, `other` excluded): robust to preemption
  spikes, the better figure on a shared machine.

Records use the benchmark's file format (`bench.results.write_record`: one JSON file per run,
atomic, append-only, schema 2) with `kind: "video"` (a model on a stream) or `kind: "video-decode"`
(decode only, one record per decode mode; a mode that cannot run, e.g. hardware decoding on a
machine without it, is a `skipped` record with the reason). Keep them in their own folder
(default `results/video`): `reports.build` and `bench.compare` read benchmark cells.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from video.errors import VideoError

STAGES = ("decode_wait", "pre", "infer", "post", "draw", "output")
OTHER = "other"   # per-frame wall time not inside any stage: loop bookkeeping, unmapping, preemption
DEFAULT_OUT = "results/video"
KINDS = ("video", "video-decode")


class RunClock:
    """Per-frame stage times, and wall/CPU marks at the end of each frame."""

    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = {s: [] for s in (*STAGES, OTHER)}
        self.ends: list[float] = []
        self.cpus: list[float] = []
        self.start_wall: float | None = None
        self.start_cpu: float | None = None

    def start(self) -> None:
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()

    def frame_done(self, stage_ms: dict[str, float]) -> None:
        end = time.perf_counter()
        for k, v in stage_ms.items():
            self.stages[k].append(float(v))
        prev = self.ends[-1] if self.ends else self.start_wall
        if prev is not None:
            self.stages[OTHER].append(max(0.0, (end - prev) * 1000.0 - sum(stage_ms.values())))
        self.ends.append(end)
        self.cpus.append(time.process_time())

    @property
    def frames(self) -> int:
        return len(self.ends)

    def summary(self, warmup: int) -> dict[str, Any]:
        return summarize_run(self.stages, self.ends, self.cpus, self.start_wall, self.start_cpu, warmup)


def summarize_run(stages: dict[str, list[float]], ends: Sequence[float], cpus: Sequence[float],
                  start_wall: float | None, start_cpu: float | None, warmup: int) -> dict[str, Any]:
    """FPS, CPU ms/frame, per-stage statistics and overhead from per-frame marks (pure)."""
    from bench.timing import summarize

    n_all = len(ends)
    if n_all == 0:
        return {"frames": 0, "measured_frames": 0, "warmup_frames": 0, "fps": None, "cpu_ms_per_frame": None,
                "cpu_cores_used": None, "wall_s": None, "stages_ms": {}, "overhead_pct": None,
                "note": "no frames"}
    note = None
    w = int(warmup)
    if w >= n_all:  # too short a clip for the warm-up: measure everything, and say so
        note = f"only {n_all} frame(s), not more than --warmup-frames {warmup}: warm-up frames are included"
        w = 0
    t_ref = ends[w - 1] if w else start_wall
    c_ref = cpus[w - 1] if w else start_cpu
    n = n_all - w
    wall = ends[-1] - t_ref if t_ref is not None else None
    cpu = cpus[-1] - c_ref if c_ref is not None else None
    stage_stats = {k: summarize(v[w:]) for k, v in stages.items() if len(v) == n_all}
    infer_mean = stage_stats.get("infer", {}).get("mean")
    frame_ms = 1000.0 * wall / n if wall else None
    medians = {k: v["median"] for k, v in stage_stats.items() if v.get("n") and k != OTHER}
    stage_overhead = (100.0 * (sum(medians.values()) - medians["infer"]) / sum(medians.values())
                      if "infer" in medians and sum(medians.values()) > 0 else None)
    out = {
        "frames": n_all, "measured_frames": n, "warmup_frames": w,
        "fps": n / wall if wall else None,
        "wall_s": wall,
        "frame_ms": frame_ms,
        "cpu_ms_per_frame": 1000.0 * cpu / n if cpu is not None else None,
        "cpu_cores_used": cpu / wall if cpu is not None and wall else None,
        "stages_ms": stage_stats,
        "overhead_pct": (100.0 * (frame_ms - infer_mean) / frame_ms) if frame_ms and infer_mean is not None else None,
        "stage_overhead_pct": stage_overhead,
    }
    if note:
        out["note"] = note
    return out


def base_record(kind: str, **fields: Any) -> dict[str, Any]:
    """A record skeleton that `bench.results.write_record` accepts (schema 2, its required fields)."""
    from bench.results import SCHEMA, now_iso

    rec = {"schema": SCHEMA, "kind": kind, "model": "-", "variant": "-", "backend": "-", "dataset": "-",
           "split": "video", "input_hw": None, "batch": 1, "status": "ok", "error": None, "timestamp": now_iso()}
    rec.update(fields)
    return rec


def write_video_record(out_dir: str | Path, rec: dict[str, Any]) -> Path:
    from bench.results import write_record

    if rec.get("kind") not in KINDS:
        raise ValueError(f"video record kind must be one of {KINDS}, got {rec.get('kind')!r}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_record(out_dir, rec)


def read_video_records(source: str | Path) -> list[dict[str, Any]]:
    from bench.results import read_records

    return [r for r in read_records(source) if r.get("kind") in KINDS]


# ------------------------------------------------------------------------------------------------
# decode only: software vs hardware on the same clip


def decode_benchmark(source: str, *, codec: str | None = None, modes: Iterable[str] = ("sw", "hw"),
                     max_frames: int | None = None, warmup: int = 10, out: str | Path | None = DEFAULT_OUT,
                     log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> list[dict]:
    """Decode `source` to RGB frames in Python with each decode mode, no model; one record per
    mode. A mode that cannot run here (no hardware decoder) is a skipped record with the reason."""
    from video import gst
    from video.decoders import choose_decoder
    from video.frames import VideoReader, probe_codec
    from video.sources import build_pipeline, parse_source

    gst.require_gst()
    src = parse_source(source, codec=codec)
    if src.kind not in ("file", "rtsp"):
        raise VideoError("decode comparison needs an encoded source: a file or an rtsp:// URL")
    if src.codec is None:
        src = parse_source(source, codec=probe_codec(src)["codec"])
    records = []
    env = _environment()
    for mode in modes:
        rec = base_record("video-decode", model="decode-only", variant=mode, dataset=src.name,
                          source=src.describe(), gst=gst.versions(), env=env)
        try:
            choice = choose_decoder(src.codec, mode, gst.registry_has)
        except VideoError as exc:
            rec.update(status="skipped", error=str(exc), backend="-")
            log(f"decode {mode}: skipped ({exc})")
            records.append(_maybe_write(out, rec))
            continue
        log(choice.log_line())
        rec.update(backend=choice.element, decoder=choice.as_dict())
        desc = build_pipeline(src, choice)
        clock = RunClock()
        clock.start()
        try:
            with VideoReader(desc, source=src) as reader:
                for frame in reader:
                    frame.release()
                    clock.frame_done({"decode_wait": reader.stats.wait_ms[-1]})
                    if max_frames and clock.frames >= max_frames:
                        break
                layout = reader.layout
        except VideoError as exc:
            rec.update(status="failed", error=str(exc))
            records.append(_maybe_write(out, rec))
            continue
        summary = clock.summary(warmup)
        rec.update(pipeline=desc, input_hw=[layout.height, layout.width] if layout else None,
                   frame_layout=layout.as_dict() if layout else None, **summary)
        log(f"decode {mode} ({choice.element}): {summary['measured_frames']} frames, "
            f"{_f(summary['fps'], '.1f')} FPS, {_f(summary['cpu_ms_per_frame'], '.2f')} CPU ms/frame")
        records.append(_maybe_write(out, rec))
    return records


def _maybe_write(out: str | Path | None, rec: dict) -> dict:
    if out is not None:
        rec["_path"] = str(write_video_record(out, rec))
    return rec


def _environment() -> dict:
    from bench.env import environment

    return environment()


# ------------------------------------------------------------------------------------------------
# tables


def _f(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else "-"


def markdown_table(records: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    rows = []
    for r in records:
        st = r.get("stages_ms") or {}
        dec = r.get("decoder") or {}

        def med(k: str) -> str:
            return _f((st.get(k) or {}).get("median"), ".2f")

        status = r.get("status") if r.get("status") == "ok" else f"{r.get('status')}: {str(r.get('error'))[:60]}"
        hw = r.get("input_hw") or []
        rows.append([
            r.get("kind"), (r.get("source") or {}).get("location", "-") if isinstance(r.get("source"), dict) else "-",
            r.get("model"), r.get("variant"), r.get("backend"),
            "x".join(map(str, hw)) if hw else "-",
            f"{dec.get('element') or '-'}{' (hw)' if dec.get('hardware') else ''}",
            r.get("measured_frames", "-"), _f(r.get("fps"), ".1f"), _f(r.get("cpu_ms_per_frame"), ".1f"),
            med("decode_wait"), med("pre"), med("infer"), med("post"), med("draw"), med("output"), med("other"),
            _f(r.get("overhead_pct"), ".1f"), _f(r.get("stage_overhead_pct"), ".1f"), status,
        ])
    headers = ["kind", "source", "model", "variant", "backend", "input", "decoder", "frames", "FPS",
               "CPU ms/frame", "decode wait ms", "pre ms", "infer ms", "post ms", "draw ms", "output ms",
               "other ms", "overhead %", "stage overhead %", "status"]
    return tabulate(rows, headers=headers, tablefmt="github")


# ------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    from zoo.errors import user_errors

    p = argparse.ArgumentParser(prog="python -m video.measure", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="Markdown table of the video records in a folder")
    t.add_argument("results", nargs="?", default=DEFAULT_OUT)
    d = sub.add_parser("decode", help="decode only, software vs hardware, on the same clip")
    d.add_argument("--source", required=True)
    d.add_argument("--codec", default="auto", help="h264, h265 or auto (probed)")
    d.add_argument("--modes", nargs="+", default=["sw", "hw"], choices=["sw", "hw", "auto"])
    d.add_argument("--max-frames", type=int)
    d.add_argument("--warmup-frames", type=int, default=10)
    d.add_argument("--out", default=DEFAULT_OUT, help=f"records folder (default {DEFAULT_OUT})")
    c = sub.add_parser("clip", help="encode an H.264 clip for tests and measurements: a videotestsrc "
                                    "pattern, or the images of a dataset split")
    c.add_argument("--out", required=True, help="file name (.mp4, .mkv or .h264)")
    c.add_argument("--data", help="encode this dataset card's images (e.g. synthetic: generated street scenes)")
    c.add_argument("--data-root", help="dataset folder (default: the card's)")
    c.add_argument("--split", default="val")
    c.add_argument("--hold", type=int, default=1, help="--data: frames per image (default 1)")
    c.add_argument("--size", default="360x480", help="videotestsrc: HxW (default 360x480)")
    c.add_argument("--frames", type=int, default=300, help="frames (default 300; --data cycles the images)")
    c.add_argument("--fps", type=int, default=30)
    c.add_argument("--pattern", default="ball", help="videotestsrc pattern (default ball)")
    args = p.parse_args(argv)
    with user_errors():
        if args.cmd == "table":
            records = read_video_records(args.results)
            if not records:
                raise VideoError(f"no video records in {args.results}: run python -m video.run first")
            print(markdown_table(records))
        elif args.cmd == "decode":
            recs = decode_benchmark(args.source, codec=args.codec, modes=args.modes, max_frames=args.max_frames,
                                    warmup=args.warmup_frames, out=args.out)
            print(markdown_table(recs))
            return 1 if any(r["status"] == "failed" for r in recs) else 0
        elif args.data:
            from zoo.data import build_dataset

            from video.frames import make_image_clip

            ds = build_dataset(args.data, root=args.data_root, split=args.split)
            images = [img for img, _label in ds.files]
            print(make_image_clip(images, args.out, frames=args.frames, fps=args.fps, hold=args.hold))
        else:
            from video.frames import make_test_clip

            try:
                h, w = (int(v) for v in args.size.lower().split("x"))
            except ValueError:
                raise VideoError(f"--size {args.size}: use HxW, e.g. 360x480") from None
            path = make_test_clip(args.out, width=w, height=h, frames=args.frames, fps=args.fps, pattern=args.pattern)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
