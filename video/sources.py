"""Sources and the pipeline string that brings their frames into Python (pure strings, no GStreamer).

Every pipeline ends the same way: decoded frames -> `videoconvert` -> RGB in system memory ->
`appsink` (signals off, frames pulled with pull-sample; `drop`/`max-buffers` bound the queue).
What comes before depends on the source:

    file     filesrc -> demuxer (qtdemux for MP4/MOV, matroskademux for MKV/WebM, tsdemux for TS;
             none for a raw .h264/.h265 stream) -> queue -> parser -> DECODER
    rtsp     rtspsrc -> depayloader -> parser -> DECODER
    usb      v4l2src -> raw caps (no decoder), or MJPEG caps -> jpegdec
    csi      nvarguscamerasrc (Jetson) -> NVMM NV12 -> nvvidconv -> BGRx (no decoder)
    test     videotestsrc -> raw caps (no decoder)

DECODER is a `decoders.DecoderChoice`: its element plus, for NVIDIA's decoders whose output lives
in NVMM memory, the converter that brings it to system memory (nvvidconv / nvvideoconvert).
Pipeline facts follow ../shared/docs/LOSSES_INSTANCES_VIDEO.md section 3 (JetsonHacks CSI camera,
Jetson Accelerated GStreamer guide).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from video.errors import VideoError

if TYPE_CHECKING:
    from video.decoders import DecoderChoice

KINDS = ("file", "rtsp", "usb", "csi", "test")
CODECS = ("h264", "h265")
# Container by file extension; None: an elementary stream that goes straight to the parser.
CONTAINERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".3gp": "qtdemux",
              ".mkv": "matroskademux", ".webm": "matroskademux",
              ".ts": "tsdemux", ".m2ts": "tsdemux",
              ".h264": None, ".264": None, ".avc": None, ".h265": None, ".265": None, ".hevc": None}
RAW_STREAM_CODEC = {".h264": "h264", ".264": "h264", ".avc": "h264", ".h265": "h265", ".265": "h265", ".hevc": "h265"}
PARSERS = {"h264": "h264parse", "h265": "h265parse"}
DEPAYLOADERS = {"h264": "rtph264depay", "h265": "rtph265depay"}
TEST_PATTERNS = ("smpte", "snow", "black", "white", "red", "green", "blue", "checkers-1", "checkers-2",
                 "checkers-4", "checkers-8", "circular", "blink", "smpte75", "zone-plate", "gamut",
                 "chroma-zone-plate", "solid-color", "ball", "smpte100", "bar", "pinwheel", "spokes",
                 "gradient", "colors")


@dataclass(frozen=True)
class Source:
    """Where frames come from. `location`: file path, RTSP URL, /dev/videoN, CSI sensor id, or
    the test pattern. `codec` (h264/h265) for files and RTSP, `mjpeg`/`raw` for USB cameras."""

    kind: str
    location: str
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    num_buffers: int | None = None      # test source: frames before EOS
    latency_ms: int = 200               # rtspsrc jitter buffer
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Live sources produce frames on their own clock: the appsink drops stale ones."""
        return self.kind in ("rtsp", "usb", "csi")

    @property
    def needs_decoder(self) -> bool:
        return self.kind in ("file", "rtsp") or (self.kind == "usb" and self.codec == "mjpeg")

    @property
    def name(self) -> str:
        """A short, file-name-safe label for records and output names."""
        if self.kind == "file":
            base = Path(self.location).stem
        elif self.kind == "rtsp":
            base = re.sub(r"^rtsps?://([^@/]*@)?", "", self.location)  # never keep credentials
        else:
            base = f"{self.kind}-{self.location}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", base)[:60] or self.kind

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind == "rtsp":
            d["location"] = re.sub(r"^(rtsps?://)[^@/]*@", r"\1***@", self.location)
        d["live"] = self.live
        return d


def parse_source(spec: str, *, codec: str | None = None, width: int | None = None, height: int | None = None,
                 fps: int | None = None, num_buffers: int | None = None, latency_ms: int = 200) -> Source:
    """`--source` text -> Source.

    test | test:PATTERN | videotestsrc[:PATTERN]     videotestsrc (default pattern ball)
    rtsp://... | rtsps://...                          RTSP
    /dev/videoN | usb:N | v4l2:/dev/videoN            USB (V4L2) camera; codec mjpeg or raw (default)
    csi | csi:N                                       Jetson CSI camera, sensor N (default 0)
    anything else                                     a file path
    """
    spec = spec.strip()
    if not spec:
        raise VideoError("--source is empty: give a file, rtsp:// URL, /dev/videoN, csi:N or test")
    low = spec.lower()
    common = dict(width=width, height=height, fps=fps)
    if low in ("test", "videotestsrc") or low.startswith(("test:", "videotestsrc:")):
        pattern = spec.split(":", 1)[1] if ":" in spec else "ball"
        if pattern not in TEST_PATTERNS and not pattern.isdigit():
            raise VideoError(f"unknown videotestsrc pattern {pattern!r}; e.g. ball, smpte, snow, gradient")
        return Source("test", pattern, codec="raw", num_buffers=num_buffers, **common)
    if low.startswith(("rtsp://", "rtsps://")):
        return Source("rtsp", spec, codec=_codec(codec), latency_ms=latency_ms, **common)
    if low.startswith(("usb:", "v4l2:")) or re.fullmatch(r"/dev/video\d+", spec):
        dev = spec.split(":", 1)[1] if ":" in spec and not spec.startswith("/") else spec
        if dev.isdigit():
            dev = f"/dev/video{dev}"
        ucodec = (codec or "raw").lower()
        if ucodec in ("auto",):
            ucodec = "raw"
        if ucodec not in ("raw", "mjpeg"):
            raise VideoError(f"--codec {codec} for a USB camera: use raw or mjpeg")
        return Source("usb", dev, codec=ucodec, **common)
    if low == "csi" or low.startswith("csi:"):
        sensor = spec.split(":", 1)[1] if ":" in spec else "0"
        if not sensor.isdigit():
            raise VideoError(f"--source {spec}: the CSI sensor id must be a number (csi:0)")
        return Source("csi", sensor, codec="raw", **common)
    if "://" in spec:
        raise VideoError(f"--source {spec}: unsupported URL scheme (supported: rtsp://, rtsps://; files by path)")
    suffix = Path(spec).suffix.lower()
    if suffix not in CONTAINERS:
        raise VideoError(f"--source {spec}: unknown container {suffix or '(no extension)'!r}; "
                         f"supported: {', '.join(sorted(CONTAINERS))}")
    fcodec = RAW_STREAM_CODEC.get(suffix) if codec in (None, "auto") else _codec(codec)
    return Source("file", spec, codec=fcodec, **common)


def _codec(codec: str | None) -> str | None:
    if codec in (None, "auto"):
        return None  # probed when the pipeline is opened (frames.probe_codec)
    c = codec.lower().replace(".", "").replace("hevc", "h265").replace("avc", "h264")
    if c not in CODECS:
        raise VideoError(f"--codec {codec}: use h264, h265 or auto")
    return c


def quote(value: str) -> str:
    """A property value for gst_parse_launch: double-quoted, with \\ and \" escaped."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _raw_caps(src: Source, memory: str = "") -> str:
    caps = "video/x-raw" + (f"({memory})" if memory else "")
    parts = [caps]
    if src.width:
        parts.append(f"width={int(src.width)}")
    if src.height:
        parts.append(f"height={int(src.height)}")
    if src.fps:
        parts.append(f"framerate={int(src.fps)}/1")
    return ",".join(parts)


def source_head(src: Source, decoder: "DecoderChoice | None") -> str:
    """Everything before the common RGB tail: the source, demux/depay, parse and decode."""
    if src.needs_decoder and decoder is None:
        raise VideoError(f"a {src.kind} source ({src.codec or 'unknown codec'}) needs a decoder choice")
    if src.kind == "test":
        props = [f"pattern={src.location}"]
        if src.num_buffers:
            props.append(f"num-buffers={int(src.num_buffers)}")
        return f"videotestsrc {' '.join(props)} ! {_raw_caps(src)}"
    if src.kind == "csi":
        csi = Source("csi", src.location, width=src.width or 1280, height=src.height or 720, fps=src.fps or 30)
        caps = _raw_caps(csi, "memory:NVMM") + ",format=NV12"
        return (f"nvarguscamerasrc sensor-id={int(src.location)} ! {caps} ! "
                "nvvidconv flip-method=0 ! video/x-raw,format=BGRx")
    if src.kind == "usb":
        if src.codec == "mjpeg":
            caps = _raw_caps(src).replace("video/x-raw", "image/jpeg", 1)
            return f"v4l2src device={quote(src.location)} ! {caps} ! {_decode(decoder)}"
        return f"v4l2src device={quote(src.location)} ! {_raw_caps(src)}"
    if src.codec not in CODECS:
        raise VideoError(f"{src.kind} source {src.location}: codec {src.codec!r} unknown; pass --codec h264 or h265")
    parser = PARSERS[src.codec]
    if src.kind == "rtsp":
        return (f"rtspsrc location={quote(src.location)} latency={int(src.latency_ms)} ! "
                f"{DEPAYLOADERS[src.codec]} ! {parser} ! {_decode(decoder)}")
    demux = CONTAINERS[Path(src.location).suffix.lower()]
    head = f"filesrc location={quote(src.location)}"
    if demux:
        # Link the demuxer's first video pad by name, so an audio track is never picked instead.
        head += f" ! {demux} name=demux demux.video_0"
    return f"{head} ! queue ! {parser} ! {_decode(decoder)}"


def _decode(decoder: "DecoderChoice | None") -> str:
    assert decoder is not None and decoder.element
    text = decoder.element + "".join(f" {k}={v}" for k, v in decoder.properties)
    return f"{text} ! {decoder.post}" if decoder.post else text


@dataclass(frozen=True)
class AppsinkSpec:
    """The appsink's queue: live sources keep only the newest frame(s) (drop=true), files keep
    every frame and block the decoder when Python falls behind (drop=false)."""

    max_buffers: int = 2
    drop: bool = False
    sync: bool = False
    name: str = "sink"

    @classmethod
    def for_source(cls, src: Source, max_buffers: int | None = None) -> "AppsinkSpec":
        if src.live:
            return cls(max_buffers=max_buffers or 1, drop=True)
        return cls(max_buffers=max_buffers or 4, drop=False)

    def element(self) -> str:
        return (f"appsink name={self.name} emit-signals=false sync={str(self.sync).lower()} "
                f"max-buffers={int(self.max_buffers)} drop={str(self.drop).lower()}")


def build_pipeline(src: Source, decoder: "DecoderChoice | None", sink: AppsinkSpec | None = None,
                   fmt: str = "RGB") -> str:
    """The full gst_parse_launch description for `src` decoded by `decoder` into `fmt` frames."""
    sink = sink or AppsinkSpec.for_source(src)
    return f"{source_head(src, decoder)} ! videoconvert ! video/x-raw,format={fmt} ! {sink.element()}"


def elements_of(pipeline: str) -> list[str]:
    """Element factory names in a pipeline description (for 'is it installed?' checks)."""
    names = []
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', pipeline)   # a quoted path may contain "!"
    for chunk in unquoted.split("!"):
        tok = chunk.strip().split(" ", 1)[0]
        if tok and "/" not in tok and "." not in tok and "=" not in tok:
            names.append(tok)
    return list(dict.fromkeys(names))
