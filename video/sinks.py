"""Where annotated frames go: `fake` (nowhere, nothing drawn), `file` (encoded video), `display`.

File and display sinks push RGB frames into a second pipeline through `appsrc`:

    appsrc (RGB, time format, blocking) ! videoconvert ! video/x-raw,format=I420 ! ENCODER ! parser ! MUXER ! filesink
    appsrc ! videoconvert ! autovideosink sync=false

ENCODER is the first installed of x264enc (plugins-ugly), openh264enc (plugins-bad), avenc_mpeg4
(libav, MPEG-4 part 2, MP4/MKV only); none installed is a one-line error naming the packages.
I420 is forced before the encoder: from RGB, videoconvert would otherwise negotiate 4:4:4, which
most players and every hardware decoder reject. Rows handed to appsrc are padded to GStreamer's
default 4-byte RGB stride (`pack_rows`), since appsrc buffers carry no video meta.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from video.errors import VideoError
from video.gst import has_display, missing_element_error, require_gst
from video.sources import elements_of, quote

SINKS = ("fake", "file", "display")
MUXERS = {".mp4": "mp4mux", ".mov": "mp4mux", ".m4v": "mp4mux", ".mkv": "matroskamux"}
RAW_STREAMS = {".h264": "h264", ".264": "h264", ".h265": "h265", ".hevc": "h265"}


@dataclass(frozen=True)
class EncoderChoice:
    element: str
    codec: str
    chain: str    # caps ! encoder ! parser, ready to splice into a description


_ENCODERS = {
    "h264": (("x264enc", "x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse"),
             ("openh264enc", "openh264enc ! h264parse")),
    "h265": (("x265enc", "x265enc speed-preset=ultrafast tune=zerolatency ! h265parse"),),
    "mpeg4": (("avenc_mpeg4", "avenc_mpeg4 ! mpeg4videoparse"),),
}


def choose_encoder(has: Callable[[str], bool], codec: str = "any") -> EncoderChoice:
    """The first installed encoder for `codec` (h264, h265, or any: H.264 first, then MPEG-4)."""
    order = ("h264", "mpeg4") if codec == "any" else (codec,)
    for c in order:
        for element, chain in _ENCODERS.get(c, ()):
            if has(element):
                return EncoderChoice(element, c, f"video/x-raw,format=I420 ! {chain}")
    if codec == "any":
        raise VideoError("no video encoder installed for --sink file: install gstreamer1.0-plugins-ugly "
                         "(x264enc), gstreamer1.0-plugins-bad (openh264enc) or gstreamer1.0-libav (avenc_mpeg4); "
                         "or use --sink fake")
    first = _ENCODERS.get(codec, (("?", ""),))[0][0]
    raise missing_element_error(first)


def mux_for(path: str | Path) -> str | None:
    """The muxer for an output file name; None for a raw elementary stream (.h264/.h265)."""
    suffix = Path(path).suffix.lower()
    if suffix in MUXERS:
        return MUXERS[suffix]
    if suffix in RAW_STREAMS:
        return None
    raise VideoError(f"output {path}: use a .mp4, .mkv, .mov or .h264 file name")


def default_stride(width: int, channels: int = 3) -> int:
    """GStreamer's default row stride for packed 8-bit formats: rounded up to 4 bytes."""
    return (width * channels + 3) & ~3


def pack_rows(frame: np.ndarray) -> bytes:
    """HxWx3 uint8 -> bytes laid out with GStreamer's default stride (padding rows if needed)."""
    h, w, c = frame.shape
    stride = default_stride(w, c)
    if stride == w * c:
        return np.ascontiguousarray(frame).tobytes()
    out = np.zeros((h, stride), dtype=np.uint8)
    out[:, : w * c] = frame.reshape(h, w * c)
    return out.tobytes()


class FakeSink:
    """Frames go nowhere; nothing is drawn (the plugin's draw step is skipped)."""

    name = "fake"
    draws = False

    def write(self, frame: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"sink": self.name}


class _AppsrcSink:
    name = "?"
    draws = True

    def __init__(self, fps: tuple[int, int] | None = None):
        self.fps = fps
        self.pipeline = self.src = self.bus = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.description = ""

    def tail(self) -> str:
        raise NotImplementedError

    def _open(self, width: int, height: int) -> None:
        Gst = require_gst()
        from gi.repository import GLib

        self.description = f"appsrc name=src format=time is-live=false block=true ! {self.tail()}"
        for name in elements_of(self.description):
            if Gst.ElementFactory.find(name) is None:
                raise missing_element_error(name)
        try:
            self.pipeline = Gst.parse_launch(self.description)
        except GLib.Error as exc:
            raise VideoError(f"output pipeline: {exc.message}") from None
        num, den = self.fps or (30, 1)
        self.src = self.pipeline.get_by_name("src")
        self.src.set_property("caps", Gst.Caps.from_string(
            f"video/x-raw,format=RGB,width={width},height={height},framerate={num}/{den}"))
        self.src.set_property("max-bytes", 4 * default_stride(width) * height)
        self.bus = self.pipeline.get_bus()
        self.size = (height, width)
        self._duration = Gst.util_uint64_scale_int(Gst.SECOND, den, num)
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self._raise_bus_error(2 * Gst.SECOND)
            raise VideoError(f"output pipeline could not start: {self.description}")

    def write(self, frame: np.ndarray) -> None:
        Gst = require_gst()
        h, w = frame.shape[:2]
        if self.pipeline is None:
            self._open(w, h)
        elif (h, w) != self.size:
            raise VideoError(f"frame size changed from {self.size} to {(h, w)} mid-stream; not supported by --sink {self.name}")
        buf = Gst.Buffer.new_wrapped(pack_rows(frame))
        buf.pts = self.frames * self._duration
        buf.duration = self._duration
        ret = self.src.emit("push-buffer", buf)
        self.frames += 1
        if ret != Gst.FlowReturn.OK:
            self._raise_bus_error(0)
            raise VideoError(f"--sink {self.name}: the output pipeline refused a frame ({ret.value_nick})")
        self._raise_bus_error(0)

    def _raise_bus_error(self, timeout_ns: int) -> None:
        Gst = require_gst()
        msg = self.bus.timed_pop_filtered(timeout_ns, Gst.MessageType.ERROR) if self.bus else None
        if msg is not None:
            err, _ = msg.parse_error()
            raise VideoError(f"--sink {self.name}: {err.message}")

    def close(self, timeout_s: float = 30.0) -> None:
        if self.pipeline is None:
            return
        Gst = require_gst()
        try:
            self.src.emit("end-of-stream")
            msg = self.bus.timed_pop_filtered(int(timeout_s * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR)
            if msg is not None and msg.type == Gst.MessageType.ERROR:
                err, _ = msg.parse_error()
                raise VideoError(f"--sink {self.name}: {err.message}")
        finally:
            self.pipeline.set_state(Gst.State.NULL)
            self.pipeline = None

    def describe(self) -> dict[str, Any]:
        return {"sink": self.name, "pipeline": self.description or None, "frames_written": self.frames}


class FileSink(_AppsrcSink):
    name = "file"

    def __init__(self, path: str | Path, fps: tuple[int, int] | None = None, codec: str | None = None):
        require_gst()
        super().__init__(fps)
        self.path = Path(path)
        self.mux = mux_for(self.path)
        from video.gst import registry_has

        codec = codec or RAW_STREAMS.get(self.path.suffix.lower(), "any")
        self.encoder = choose_encoder(registry_has, codec=codec)

    def tail(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mux = f" ! {self.mux}" if self.mux else ""
        return f"videoconvert ! {self.encoder.chain}{mux} ! filesink location={quote(str(self.path))}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "encoder": self.encoder.element}


class DisplaySink(_AppsrcSink):
    name = "display"

    def __init__(self, fps: tuple[int, int] | None = None):
        if not has_display():
            raise VideoError("--sink display needs a display ($DISPLAY or $WAYLAND_DISPLAY is unset); "
                             "use --sink file or --sink fake")
        super().__init__(fps)

    def tail(self) -> str:
        return "videoconvert ! autovideosink sync=false"


def make_sink(kind: str, *, path: str | Path | None = None, fps: tuple[int, int] | None = None) -> Any:
    if kind == "fake":
        return FakeSink()
    if kind == "file":
        if path is None:
            raise VideoError("--sink file needs --output PATH")
        return FileSink(path, fps)
    if kind == "display":
        return DisplaySink(fps)
    raise VideoError(f"--sink {kind}: use one of {', '.join(SINKS)}")
