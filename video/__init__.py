"""Video pipelines: GStreamer sources and decoders feeding zoo networks, frame by frame.

    python -m video.run --source clip.mp4 --model ddrnet --quant static --backend onnxruntime --sink file

Layout (GStreamer is optional: everything here imports without it; only opening a pipeline needs
PyGObject and the GStreamer plugins, and says which packages to install when they are missing):

    sources.py   pipeline strings for each source (file, RTSP, USB, Jetson CSI, test) and decoder
    decoders.py  decoder choice (--decode auto|hw|sw) from the GStreamer registry
    frames.py    appsink -> NumPy (zero-copy, stride-safe), bus handling, test clips
    sinks.py     where annotated frames go: fake, file (encoder + muxer), display
    plugins.py   the model plugin interface, entry-point discovery, the built-in zoo plugin
    measure.py   FPS, CPU ms per frame, per-stage times -> result records (kind "video")
    run.py       the CLI (argparse only)
"""
from video.errors import GstUnavailable, VideoError

__all__ = ["GstUnavailable", "VideoError"]
