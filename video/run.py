"""Run a zoo network (or a plugin) on a video stream through GStreamer, measure it, record it.

Examples:
    python -m video.run --source clip.mp4 --model ddrnet --quant static --backend onnxruntime --sink file
    python -m video.run --source clip.mp4 --model ddrnet --weights random --sink fake --decode sw
    python -m video.run --source rtsp://camera.local/stream --model ddrnet --sink display --decode hw
    python -m video.run --source /dev/video0 --width 640 --height 480 --fps 30 --model espnet --sink display
    python -m video.run --source csi:0 --width 1280 --height 720 --model ddrnet --backend tensorrt    # Jetson
    python -m video.run --source test --num-buffers 100 --model ddrnet --weights random --sink fake
    python -m video.run --source clip.mp4 --model ddrnet --dry-run       # print the decoder and pipeline only
    python -m video.run --list-plugins

Sources: a file (H.264/H.265 in MP4/MOV/MKV/TS, or a raw .h264/.h265 stream), rtsp:// URL,
/dev/videoN or usb:N (V4L2; --codec mjpeg for MJPEG cameras), csi:N (Jetson), test[:PATTERN].
--decode auto picks a hardware decoder when the GStreamer registry has one (nvv4l2decoder,
nvh264dec, vah264dec, vaapih264dec), else avdec_*; hw insists; sw never uses hardware.
Sinks: fake (nothing drawn or written), file (annotated video; --output, default under --out),
display (a window). Each run writes one record (kind "video") under --out (default results/video):
FPS, CPU ms per frame, per-stage times; `python -m video.measure table` prints them.
"""
from __future__ import annotations

import argparse
import sys

from video.measure import DEFAULT_OUT


def _hw(text: str) -> tuple[int, int]:
    import re

    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: use HxW, e.g. 360x480")
    return int(m.group(1)), int(m.group(2))


def build_parser() -> argparse.ArgumentParser:
    from bench.backends import BACKENDS
    from zoo.api import VARIANTS

    from video.decoders import MODES
    from video.sinks import SINKS

    p = argparse.ArgumentParser(prog="python -m video.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help="file, rtsp:// URL, /dev/videoN, usb:N, csi:N or test[:PATTERN]")
    p.add_argument("--model", default="ddrnet", help="zoo network (python -m zoo.list); default ddrnet")
    p.add_argument("--quant", default="fp32", choices=VARIANTS, help="variant (default fp32)")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS, help="inference backend (default onnxruntime)")
    p.add_argument("--plugin", default="zoo", help="model plugin (default: the built-in zoo plugin)")
    p.add_argument("--sink", default="fake", choices=SINKS, help="where annotated frames go (default fake)")
    p.add_argument("--output", help="--sink file: output video (.mp4/.mkv; default under --out)")
    p.add_argument("--decode", default="auto", choices=MODES, help="decoder: auto (default), hw, sw")
    p.add_argument("--codec", default="auto", help="h264, h265 or auto (probed) for files/RTSP; raw or mjpeg for USB")
    p.add_argument("--width", type=int, help="camera / test source width")
    p.add_argument("--height", type=int, help="camera / test source height")
    p.add_argument("--fps", type=int, help="camera / test source frame rate")
    p.add_argument("--num-buffers", type=int, help="test source: frames before end of stream (default: endless)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--warmup-frames", type=int, default=5, help="frames excluded from the statistics (default 5)")
    p.add_argument("--max-buffers", type=int, help="appsink queue length (default 1 for live sources, 4 for files)")
    p.add_argument("--data", help="dataset card for classes/palette/preprocessing (default: synthetic, coco for detectors)")
    p.add_argument("--data-root", help="dataset folder (for calibration or training when needed)")
    p.add_argument("--weights", help="checkpoint path, or 'random' (seeded untrained weights: speed only)")
    p.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    p.add_argument("--input-size", type=_hw, metavar="HxW", help="network input size (default: the card's)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    p.add_argument("--artifacts", help="artifact cache (default ./artifacts or $EDGEZOO_ARTIFACTS)")
    p.add_argument("--calib-images", type=int, default=256, help="static PTQ calibration images (default 256)")
    p.add_argument("--calib-method", default=None, choices=["minmax", "percentile", "entropy"],
                   help="static PTQ calibration (default: the task's for the backend, as bench.run)")
    p.add_argument("--alpha", type=float, default=0.5, help="segmentation overlay opacity (default 0.5)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="detection confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="detection NMS IoU threshold")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"records folder (default {DEFAULT_OUT})")
    p.add_argument("--no-record", action="store_true", help="do not write a record")
    p.add_argument("--first-frame-timeout", type=float, default=15.0, help="seconds to wait for the first frame")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the decoder choice and pipeline, run nothing")
    p.add_argument("--list-plugins", action="store_true", help="list the model plugins found and exit")
    return p


def config_from_args(args: argparse.Namespace):
    from video.pipeline import VideoConfig
    from video.plugins import PluginConfig

    model = PluginConfig(model=args.model, variant=args.quant, backend=args.backend, weights=args.weights,
                         data=args.data, data_root=args.data_root, input_hw=args.input_size, threads=args.threads,
                         artifacts=args.artifacts, calib_images=args.calib_images, calib_method=args.calib_method,
                         seed=args.seed, alpha=args.alpha, conf_thres=args.conf_thres, iou_thres=args.iou_thres,
                         progress=not args.no_progress)
    return VideoConfig(source=args.source, plugin=args.plugin, model=model, decode=args.decode, codec=args.codec,
                       sink=args.sink, output=args.output, width=args.width, height=args.height, fps=args.fps,
                       num_buffers=args.num_buffers, max_frames=args.max_frames, warmup_frames=args.warmup_frames,
                       max_buffers=args.max_buffers, out=None if args.no_record else args.out,
                       first_frame_timeout=args.first_frame_timeout)


def main(argv: list[str] | None = None) -> int:
    from zoo.errors import UsageError, user_errors

    args = build_parser().parse_args(argv)
    with user_errors():
        if args.list_plugins:
            from video.plugins import discover

            for name, factory in sorted(discover().items()):
                where = getattr(factory, "value", None) or f"{factory.__module__}:{factory.__qualname__} (built-in)"
                print(f"{name}\t{where}")
            return 0
        if not args.source:
            raise UsageError("--source is required (a file, rtsp:// URL, /dev/videoN, csi:N or test)")
        if args.threads < 1:
            raise UsageError("--threads must be >= 1")
        cfg = config_from_args(args)
        from video.pipeline import resolve_pipeline, run_video, summary_line

        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        if args.dry_run:
            _src, _decoder, desc = resolve_pipeline(cfg, log)
            print(desc)
            return 0
        rec = run_video(cfg, log)
        print(summary_line(rec))
        if rec.get("_path"):
            print(f"record: {rec['_path']}")
        if (rec.get("sink") or {}).get("path"):
            print(f"annotated video: {rec['sink']['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
