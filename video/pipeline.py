"""One video run: source -> decoder -> frames -> model plugin -> sink, measured and recorded.

`run_video(VideoConfig(...))` is what `python -m video.run` calls (argparse stays in run.py). The
model is loaded before the pipeline starts, so load, export and quantization time never count
toward the frame rate; the first `warmup_frames` frames are excluded from the statistics.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from video.errors import VideoError
from video.measure import DEFAULT_OUT, RunClock, base_record, write_video_record
from video.plugins import PluginConfig, config_dict, load_plugin


@dataclass
class VideoConfig:
    source: str
    plugin: str = "zoo"
    model: PluginConfig = field(default_factory=PluginConfig)
    decode: str = "auto"              # auto | hw | sw
    codec: str = "auto"               # h264 | h265 | auto (probed) ; raw | mjpeg for USB cameras
    sink: str = "fake"                # fake | file | display
    output: str | None = None         # --sink file: the video file (default under `out`)
    width: int | None = None          # cameras and the test source
    height: int | None = None
    fps: int | None = None
    num_buffers: int | None = None    # test source: frames before EOS
    max_frames: int | None = None     # stop after this many frames (live sources run until Ctrl-C)
    warmup_frames: int = 5
    max_buffers: int | None = None    # appsink queue (default 1 for live sources, 4 for files)
    out: str | None = DEFAULT_OUT     # records folder; None: do not write a record
    first_frame_timeout: float = 15.0


def resolve_pipeline(cfg: VideoConfig, log: Callable[[str], None]) -> tuple[Any, Any, str]:
    """(Source, DecoderChoice or None, pipeline description) for `cfg` (needs GStreamer)."""
    from video import gst
    from video.decoders import choose_decoder
    from video.frames import probe_codec
    from video.sources import AppsinkSpec, build_pipeline, parse_source

    gst.require_gst()
    src = parse_source(cfg.source, codec=cfg.codec, width=cfg.width, height=cfg.height, fps=cfg.fps,
                       num_buffers=cfg.num_buffers)
    if src.kind == "file" and not Path(src.location).is_file():
        raise VideoError(f"no such video file: {src.location}")
    if src.kind in ("file", "rtsp") and src.codec is None:
        probed = probe_codec(src)
        log(f"probed {src.describe()['location']}: {probed['codec']} {probed['width']}x{probed['height']} "
            f"@ {probed['fps']}")
        src = parse_source(cfg.source, codec=probed["codec"], width=cfg.width, height=cfg.height, fps=cfg.fps,
                           num_buffers=cfg.num_buffers)
    decoder = choose_decoder(src.codec or "raw", cfg.decode, gst.registry_has)
    log(decoder.log_line())
    desc = build_pipeline(src, decoder if decoder.element else None, AppsinkSpec.for_source(src, cfg.max_buffers))
    return src, decoder, desc


def default_output(cfg: VideoConfig, src: Any) -> str:
    m = cfg.model
    return str(Path(cfg.out or DEFAULT_OUT) / f"{src.name}__{m.model}__{m.variant}__{m.backend}.mp4")


def run_video(cfg: VideoConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Run the pipeline to the end of the stream (or `max_frames`, or Ctrl-C) and return the
    record (also written under `cfg.out` unless None). Setup problems raise VideoError (one line);
    a failure after frames started flowing becomes a `failed` record and is raised as well."""
    from bench.memory import peak_rss_mb
    from video import gst
    from video.frames import VideoReader
    from video.sinks import make_sink

    gst.require_gst()
    if cfg.warmup_frames < 0:
        raise VideoError("--warmup-frames must be >= 0")
    src, decoder, desc = resolve_pipeline(cfg, log)
    plugin = load_plugin(cfg.plugin, cfg.model)
    t0 = time.perf_counter()
    plugin.load(log)
    load_s = time.perf_counter() - t0
    info = plugin.describe()
    output = cfg.output or (default_output(cfg, src) if cfg.sink == "file" else None)
    log(f"pipeline: {desc}")
    clock = RunClock()
    reader = VideoReader(desc, source=src, first_frame_timeout=cfg.first_frame_timeout)
    sink = None
    error: VideoError | None = None
    interrupted = False
    first_ms: dict[str, float] = {}
    clock.start()
    try:
        reader.open()
        while True:
            frame = reader.read()
            if frame is None:
                break
            if sink is None:
                fps = reader.layout.fps if reader.layout else None
                sink = make_sink(cfg.sink, path=output, fps=fps)
            stage = {"decode_wait": reader.stats.wait_ms[-1]}
            a = time.perf_counter()
            inputs = plugin.preprocess(frame.rgb)
            b = time.perf_counter()
            outputs = plugin.infer(inputs)
            c = time.perf_counter()
            result = plugin.postprocess(outputs, inputs, frame.rgb)
            d = time.perf_counter()
            stage.update(pre=(b - a) * 1e3, infer=(c - b) * 1e3, post=(d - c) * 1e3)
            if sink.draws:
                image = plugin.draw(frame.rgb, result)
                e = time.perf_counter()
                sink.write(image)
                stage.update(draw=(e - d) * 1e3, output=(time.perf_counter() - e) * 1e3)
            frame.release()
            clock.frame_done(stage)
            if clock.frames == 1:
                first_ms = dict(stage)
            if cfg.max_frames and clock.frames >= cfg.max_frames:
                break
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: closing the pipeline and recording the frames so far")
    except VideoError as exc:
        error = exc
    finally:
        reader.close()
        if sink is not None:
            try:
                sink.close()
            except VideoError as exc:
                error = error or exc
    if error is not None and clock.frames == 0:
        raise error
    summary = clock.summary(cfg.warmup_frames)
    layout = reader.layout
    rec = base_record(
        "video",
        model=info.get("model", cfg.model.model), variant=info.get("variant", cfg.model.variant),
        backend=info.get("backend", cfg.model.backend), precision=info.get("precision"), device=info.get("device"),
        dataset=info.get("dataset", "-"), input_hw=info.get("input_hw"), threads=info.get("threads"),
        weights_sha256=info.get("weights_sha256"), quant_config=info.get("quant_config"),
        status="ok" if error is None else "failed", error=str(error) if error else None,
        source=src.describe(), frame_layout=layout.as_dict() if layout else None,
        decoder=decoder.as_dict(), pipeline=desc, sink=(sink.describe() if sink else {"sink": cfg.sink}),
        plugin={"name": cfg.plugin, **{k: v for k, v in info.items() if k not in ("weights", "artifact")}},
        config={**config_dict(cfg.model), "decode": cfg.decode, "codec": cfg.codec, "max_frames": cfg.max_frames,
                "warmup_frames": cfg.warmup_frames, "max_buffers": cfg.max_buffers},
        artifact=info.get("artifact"), weights=info.get("weights"),
        load_s=load_s, first_frame_ms=first_ms or None,
        time_to_first_frame_s=((reader.stats.first_frame_s - reader.stats.start_s)
                               if reader.stats.first_frame_s and reader.stats.start_s else None),
        zero_copy=(reader.stats.zero_copy_frames == reader.stats.frames) if reader.stats.frames else None,
        zero_copy_frames=reader.stats.zero_copy_frames, gst_warnings=reader.stats.warnings[:10] or None,
        interrupted=interrupted, peak_rss_mb=peak_rss_mb(), gst=gst.versions(),
        machine_load={"load_1m": _load(), "cores": os.cpu_count()},
        **summary,
    )
    from bench.env import environment

    rec["env"] = environment()
    if cfg.out is not None:
        rec["_path"] = str(write_video_record(cfg.out, rec))
    if error is not None:
        raise error
    return rec


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def summary_line(rec: dict) -> str:
    st = rec.get("stages_ms") or {}

    def med(k: str) -> str:
        v = (st.get(k) or {}).get("median")
        return f"{v:.1f}" if isinstance(v, (int, float)) else "-"

    fps = rec.get("fps")
    cpu = rec.get("cpu_ms_per_frame")
    ovh = rec.get("overhead_pct")
    sovh = rec.get("stage_overhead_pct")
    return (f"{rec['model']} {rec['variant']} on {rec['backend']}, decoder {rec['decoder']['element'] or 'none'}: "
            f"{rec.get('measured_frames')} frames, {fps:.1f} FPS, {cpu:.1f} CPU ms/frame, "
            f"stages (median ms) decode wait {med('decode_wait')}, pre {med('pre')}, infer {med('infer')}, "
            f"post {med('post')}, draw {med('draw')}, output {med('output')}, other {med('other')}; overhead "
            f"{ovh:.1f} % of the frame time ({sovh:.1f} % from stage medians)"
            if fps and cpu is not None and ovh is not None and sovh is not None else
            f"{rec['model']}: {rec.get('frames', 0)} frames ({rec.get('note') or 'no measurement'})")
