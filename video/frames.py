"""Frames from an appsink into NumPy: zero-copy where possible, stride-safe, clean shutdown.

* The appsink has signals off; frames are pulled (`try-pull-sample` with a short timeout, so the
  bus is polled between tries: an ERROR is raised at once instead of blocking forever).
* Each frame is a read-only HxWx3 uint8 view of the mapped GStreamer buffer. PyGObject's own
  `Gst.Buffer.map` hands out a *copy* (`MapInfo.data` is `bytes` without gst-python's overrides),
  so the buffer is mapped through `gst_buffer_map` with ctypes instead (the boxed wrapper's hash
  is the C pointer, the same fact DeepStream's pyds relies on; checked against the buffer's GType
  before use). Where that is not possible the copy is used and the record says `zero_copy: false`.
  A view is valid until `Frame.release()`; keep `frame.rgb.copy()` to hold on to pixels longer.
* Rows may be padded: GStreamer aligns RGB rows to 4 bytes (a 97-pixel row takes 292 bytes, not
  291), and decoders/allocators may pad more. The row stride and plane offset come from the
  buffer's `GstVideoMeta` when it has one, else from `GstVideoInfo` of the caps; `frame_view`
  builds the strided view and never assumes `width * 3`.
* EOS ends iteration; ERROR messages become one-line `VideoError`s naming the fix; `close()` sets
  the pipeline to NULL (also on exceptions and Ctrl-C, through the context manager).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from video.errors import VideoError
from video.gst import missing_element_error, package_for, require_gst, require_gstvideo
from video.sources import Source, elements_of

ZERO_COPY_ENV = "EDGEZOO_VIDEO_ZERO_COPY"   # "0" forces the copying path (for comparison)
POLL_NS = 50_000_000                       # try-pull-sample timeout between bus polls (50 ms)


def frame_view(data: Any, width: int, height: int, stride: int, *, offset: int = 0,
               channels: int = 3) -> np.ndarray:
    """A read-only (height, width, channels) uint8 view of packed-pixel rows `stride` bytes
    apart, starting `offset` bytes into `data` (bytes, memoryview, ctypes array or uint8 array).
    No copy; padding bytes at the end of each row are skipped."""
    flat = data.reshape(-1) if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if flat.dtype != np.uint8:
        raise ValueError(f"frame data must be uint8 bytes, got {flat.dtype}")
    row = width * channels
    if width <= 0 or height <= 0 or stride < row or offset < 0:
        raise ValueError(f"bad frame layout: {width}x{height}x{channels}, stride {stride}, offset {offset}")
    need = offset + stride * (height - 1) + row
    if need > flat.size:
        raise ValueError(f"frame data holds {flat.size} bytes; {width}x{height}x{channels} with stride "
                         f"{stride} and offset {offset} needs {need}")
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=(height, width, channels),
                                           strides=(stride, channels, 1), writeable=False)


class _MapInfo(ctypes.Structure):
    # GstMapInfo (gst/gstmemory.h): memory, flags, data, size, maxsize, user_data[4], _gst_reserved[4]
    _fields_ = [("memory", ctypes.c_void_p), ("flags", ctypes.c_int), ("data", ctypes.c_void_p),
                ("size", ctypes.c_size_t), ("maxsize", ctypes.c_size_t),
                ("user_data", ctypes.c_void_p * 4), ("_gst_reserved", ctypes.c_void_p * 4)]


class _NativeMapper:
    """gst_buffer_map / gst_buffer_unmap through ctypes on the wrapper's C pointer."""

    GST_MAP_READ = 1

    def __init__(self, Gst: Any):
        name = ctypes.util.find_library("gstreamer-1.0") or "libgstreamer-1.0.so.0"
        lib = ctypes.CDLL(name)
        lib.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo), ctypes.c_int]
        lib.gst_buffer_map.restype = ctypes.c_int
        lib.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo)]
        lib.gst_buffer_unmap.restype = None
        self.lib = lib
        self.buffer_gtype = hash(Gst.Buffer.__gtype__)

    def map(self, buf: Any) -> tuple[Any, Callable[[], None]] | None:
        ptr = hash(buf)
        # GstMiniObject starts with its GType: a wrong pointer is refused instead of mapped.
        if ptr <= 4096 or ctypes.c_size_t.from_address(ptr).value != self.buffer_gtype:
            return None
        info = _MapInfo()
        if not self.lib.gst_buffer_map(ptr, ctypes.byref(info), self.GST_MAP_READ):
            return None
        data = (ctypes.c_uint8 * info.size).from_address(info.data)
        done = [False]

        def unmap() -> None:
            if not done[0]:
                done[0] = True
                self.lib.gst_buffer_unmap(ptr, ctypes.byref(info))

        return data, unmap


@dataclass
class Frame:
    """One decoded frame. `rgb` is a read-only view, valid until `release()`."""

    rgb: np.ndarray
    index: int
    pts_ns: int | None
    zero_copy: bool
    _unmap: Callable[[], None] | None = None
    _keep: Any = None   # the sample and buffer: the mapped memory lives as long as they do

    def release(self) -> None:
        if self._unmap is not None:
            self._unmap()
            self._unmap = None
        self._keep = None


@dataclass
class FrameLayout:
    width: int
    height: int
    stride: int
    offset: int
    fps: tuple[int, int] | None
    source: str   # "video-meta" or "caps"

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "stride": self.stride, "offset": self.offset,
                "fps": f"{self.fps[0]}/{self.fps[1]}" if self.fps else None, "from": self.source}


@dataclass
class ReaderStats:
    frames: int = 0
    wait_ms: list[float] = field(default_factory=list)   # time blocked waiting for each frame
    zero_copy_frames: int = 0
    start_s: float | None = None                          # PLAYING requested (perf_counter)
    first_frame_s: float | None = None
    warnings: list[str] = field(default_factory=list)


class VideoReader:
    """Iterate the RGB frames of a pipeline description ending in `appsink name=sink`.

        with VideoReader(build_pipeline(src, decoder), source=src) as reader:
            for frame in reader:
                ...
                frame.release()
    """

    def __init__(self, description: str, *, source: Source | None = None, first_frame_timeout: float = 15.0,
                 frame_timeout: float | None = None, zero_copy: bool | None = None, sink_name: str = "sink"):
        self.description = description
        self.source = source
        self.first_frame_timeout = first_frame_timeout
        # Live sources may pause; files never stall for long once running.
        self.frame_timeout = frame_timeout if frame_timeout is not None else (30.0 if source and source.live else 60.0)
        if zero_copy is None:
            zero_copy = os.environ.get(ZERO_COPY_ENV, "1") != "0"
        self.zero_copy = zero_copy
        self.sink_name = sink_name
        self.pipeline = self.sink = self.bus = None
        self.layout: FrameLayout | None = None
        self.stats = ReaderStats()
        self._mapper: _NativeMapper | None = None
        self._caps_key: str | None = None
        self._caps_layout: FrameLayout | None = None
        self._eos = False

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> "VideoReader":
        Gst = require_gst()
        if self.source is not None and self.source.kind == "file" and not Path(self.source.location).is_file():
            raise VideoError(f"no such video file: {self.source.location}")
        for name in elements_of(self.description):
            if Gst.ElementFactory.find(name) is None:
                raise missing_element_error(name)
        from gi.repository import GLib

        try:
            self.pipeline = Gst.parse_launch(self.description)
        except GLib.Error as exc:
            raise _parse_error(str(exc.message)) from None
        self.sink = self.pipeline.get_by_name(self.sink_name)
        if self.sink is None:
            self.close()
            raise VideoError(f"the pipeline has no appsink named {self.sink_name!r}: {self.description}")
        self.bus = self.pipeline.get_bus()
        if self.zero_copy:
            try:
                self._mapper = _NativeMapper(Gst)
            except (OSError, AttributeError, TypeError):
                self._mapper = None
        self.stats.start_s = time.perf_counter()
        ret = self.pipeline.set_state(Gst.State.PLAYING)
        if ret == Gst.StateChangeReturn.FAILURE:
            err = self._pop_error(timeout_ns=2_000_000_000)
            self.close()
            raise err or VideoError(f"the pipeline could not start: {self.description}")
        return self

    def close(self) -> None:
        if self.pipeline is not None:
            Gst = require_gst()
            self.pipeline.set_state(Gst.State.NULL)
            self.pipeline.get_state(5 * Gst.SECOND)
        self.pipeline = self.sink = self.bus = None

    def __enter__(self) -> "VideoReader":
        return self.open() if self.pipeline is None and self.stats.start_s is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        if self.pipeline is None and self.stats.start_s is None:  # never opened (a closed reader stays closed)
            self.open()
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    # -- frames --------------------------------------------------------------------------------
    def read(self) -> Frame | None:
        """The next frame, or None at end of stream. Time spent waiting goes to `stats.wait_ms`."""
        if self._eos or self.pipeline is None:
            return None
        t0 = time.perf_counter()
        timeout = self.first_frame_timeout if self.stats.frames == 0 else self.frame_timeout
        while True:
            sample = self.sink.emit("try-pull-sample", POLL_NS)
            if sample is not None:
                now = time.perf_counter()
                self.stats.wait_ms.append((now - t0) * 1000.0)
                if self.stats.first_frame_s is None:
                    self.stats.first_frame_s = now
                return self._frame(sample)
            self._check_bus()
            if self.sink.get_property("eos"):
                self._eos = True
                return None
            if time.perf_counter() - t0 > timeout:
                what = self.source.describe()["location"] if self.source else "the pipeline"
                first = self.stats.frames == 0
                raise VideoError(f"no {'first ' if first else ''}frame from {what} within {timeout:g} s"
                                 + ("; check that the source produces video (camera connected, stream "
                                    "running, URL right)" if first else "; the source stalled"))

    def _frame(self, sample: Any) -> Frame:
        buf = sample.get_buffer()
        layout = self._layout(sample, buf)
        mapped = self._mapper.map(buf) if self._mapper is not None else None
        if mapped is not None:
            data, unmap = mapped
            zero_copy = True
            self.stats.zero_copy_frames += 1
        else:
            Gst = require_gst()
            ok, info = buf.map(Gst.MapFlags.READ)
            if not ok:
                raise VideoError("could not map a decoded frame's memory (GstBuffer.map failed)")
            data = info.data  # bytes: PyGObject copies here
            buf.unmap(info)
            unmap, zero_copy = None, False
        try:
            rgb = frame_view(data, layout.width, layout.height, layout.stride, offset=layout.offset)
        except ValueError as exc:
            if unmap:
                unmap()
            raise VideoError(f"decoded frame does not match its caps: {exc}") from None
        pts = buf.pts
        Gst = require_gst()
        frame = Frame(rgb=rgb, index=self.stats.frames, pts_ns=None if pts == Gst.CLOCK_TIME_NONE else int(pts),
                      zero_copy=zero_copy, _unmap=unmap, _keep=(sample, buf, data))
        self.stats.frames += 1
        return frame

    def _layout(self, sample: Any, buf: Any) -> FrameLayout:
        GstVideo = require_gstvideo()
        caps = sample.get_caps()
        key = caps.to_string()
        if self._caps_layout is None or key != self._caps_key:
            info = _video_info(GstVideo, caps)
            if info.finfo.format != GstVideo.VideoFormat.RGB:
                raise VideoError(f"appsink delivered {key}, expected format=RGB")
            ok, num, den = caps.get_structure(0).get_fraction("framerate")
            fps = (num, den) if ok and num > 0 and den > 0 else None
            self._caps_layout = FrameLayout(int(info.width), int(info.height), int(info.stride[0]),
                                            int(info.offset[0]), fps, "caps")
            self._caps_key = key
        layout = self._caps_layout
        try:
            meta = GstVideo.buffer_get_video_meta(buf)
        except (AttributeError, TypeError):
            meta = None
        if meta is not None:  # the allocator's real layout beats the caps' default one
            if self.layout is None or (self.layout.stride, self.layout.offset) != (int(meta.stride[0]), int(meta.offset[0])):
                self.layout = FrameLayout(int(meta.width), int(meta.height), int(meta.stride[0]),
                                          int(meta.offset[0]), layout.fps, "video-meta")
            return self.layout
        self.layout = layout
        return layout

    # -- bus -----------------------------------------------------------------------------------
    def _check_bus(self) -> None:
        Gst = require_gst()
        types = Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.WARNING
        while True:
            msg = self.bus.pop_filtered(types)
            if msg is None:
                return
            if msg.type == Gst.MessageType.ERROR:
                raise _bus_error(msg, self.source)
            if msg.type == Gst.MessageType.WARNING:
                warn, _debug = msg.parse_warning()
                self.stats.warnings.append(f"{_src_name(msg)}: {warn.message}")
            # EOS: the appsink reports it through its "eos" property once drained.

    def _pop_error(self, timeout_ns: int) -> VideoError | None:
        Gst = require_gst()
        msg = self.bus.timed_pop_filtered(timeout_ns, Gst.MessageType.ERROR)
        return _bus_error(msg, self.source) if msg is not None else None


def _video_info(GstVideo: Any, caps: Any) -> Any:
    try:
        return GstVideo.VideoInfo.new_from_caps(caps)
    except AttributeError:  # PyGObject / GStreamer < 1.20
        info = GstVideo.VideoInfo()
        info.from_caps(caps)
        return info


def _src_name(msg: Any) -> str:
    src = msg.src
    try:
        factory = src.get_factory()
        return factory.get_name() if factory is not None else src.get_name()
    except AttributeError:
        return getattr(src, "get_name", lambda: "?")()


def _ancestors(src: Any) -> list[str]:
    """Factory names of the element that posted a message and its parents (rtspsrc posts from
    children such as udpsrc)."""
    names = []
    while src is not None:
        try:
            factory = src.get_factory()
            if factory is not None:
                names.append(factory.get_name())
        except AttributeError:
            pass
        src = src.get_parent() if hasattr(src, "get_parent") else None
    return names


def _parse_error(message: str) -> VideoError:
    import re

    m = re.search(r'no element "([^"]+)"', message)
    if m:
        return missing_element_error(m.group(1))
    m = re.search(r"could not link (\S+) to (\S+)", message)
    if m:
        return VideoError(f"GStreamer could not link {m.group(1)} to {m.group(2)} (formats do not match): {message}")
    return VideoError(f"bad pipeline description: {message}")


def _bus_error(msg: Any, source: Source | None) -> VideoError:
    err, debug = msg.parse_error()
    names = _ancestors(msg.src)
    text = str(err.message).strip().rstrip(".")
    where = source.describe()["location"] if source else ""
    debug_s = str(debug or "")
    if "rtspsrc" in names:
        return VideoError(f"RTSP source {where}: {text}; check the URL, that the server is reachable "
                          "from here (firewall, port 554/TCP) and the credentials")
    if "filesrc" in names:
        return VideoError(f"cannot read {where}: {text}")
    if "v4l2src" in names:
        return VideoError(f"camera {where}: {text}; check the device (v4l2-ctl --list-devices from v4l-utils), "
                          "that no other program holds it, and that it supports the requested size/rate")
    if "nvarguscamerasrc" in names:
        return VideoError(f"CSI camera sensor {where}: {text}; check the ribbon cable and that nvargus-daemon "
                          "runs (sudo systemctl restart nvargus-daemon)")
    if "not-negotiated" in debug_s:
        return VideoError(f"{names[0] if names else 'an element'}: formats could not be negotiated ({text}); "
                          "is the stream really the codec given with --codec? try --codec auto")
    if any(n.endswith(("demux", "parse")) for n in names):
        return VideoError(f"{names[0]}: {text} (damaged file, or not the container/codec expected: try --codec auto)")
    return VideoError(f"GStreamer error in {names[0] if names else 'the pipeline'}: {text}")


# ------------------------------------------------------------------------------------------------
# codec probing and test clips


def probe_codec(source: Source, timeout_s: float = 10.0) -> dict[str, Any]:
    """The video codec and size of a file or RTSP stream, from GstPbutils' Discoverer:
    {"codec": "h264"|"h265", "caps": ..., "width", "height", "fps"}."""
    Gst = require_gst()
    import gi

    try:
        gi.require_version("GstPbutils", "1.0")
        from gi.repository import GLib, GstPbutils
    except (ImportError, ValueError) as exc:
        raise VideoError(f"cannot probe the codec (GstPbutils missing: {exc}); install gir1.2-gst-plugins-base-1.0 "
                         "or pass --codec h264/h265") from None
    if source.kind == "file":
        path = Path(source.location)
        if not path.is_file():
            raise VideoError(f"no such video file: {source.location}")
        uri = path.resolve().as_uri()
    else:
        uri = source.location
    disc = GstPbutils.Discoverer.new(int(timeout_s * Gst.SECOND))
    try:
        info = disc.discover_uri(uri)
    except GLib.Error as exc:
        raise VideoError(f"cannot read {source.describe()['location']}: {exc.message}; pass --codec h264/h265 "
                         "to skip probing") from None
    streams = info.get_video_streams()
    if not streams:
        raise VideoError(f"{source.describe()['location']} has no video stream")
    vs = streams[0]
    caps = vs.get_caps()
    name = caps.get_structure(0).get_name()
    codec = {"video/x-h264": "h264", "video/x-h265": "h265"}.get(name)
    if codec is None:
        raise VideoError(f"{source.describe()['location']}: video codec {name} is not supported here (H.264 or H.265)")
    num, den = vs.get_framerate_num(), vs.get_framerate_denom()
    return {"codec": codec, "caps": caps.to_string(), "width": vs.get_width(), "height": vs.get_height(),
            "fps": f"{num}/{den}" if den else None}


def run_to_eos(description: str, timeout_s: float = 60.0) -> None:
    """Run a pipeline without appsink until EOS; raise VideoError on error or timeout."""
    Gst = require_gst()
    from gi.repository import GLib

    for name in elements_of(description):
        if Gst.ElementFactory.find(name) is None:
            raise missing_element_error(name)
    try:
        pipe = Gst.parse_launch(description)
    except GLib.Error as exc:
        raise _parse_error(str(exc.message)) from None
    try:
        pipe.set_state(Gst.State.PLAYING)
        msg = pipe.get_bus().timed_pop_filtered(int(timeout_s * Gst.SECOND),
                                                Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg is None:
            raise VideoError(f"pipeline did not finish within {timeout_s:g} s: {description}")
        if msg.type == Gst.MessageType.ERROR:
            raise _bus_error(msg, None)
    finally:
        pipe.set_state(Gst.State.NULL)


def make_test_clip(path: str | Path, *, width: int = 96, height: int = 64, frames: int = 10, fps: int = 30,
                   pattern: str = "ball", codec: str = "h264") -> Path:
    """Encode `frames` videotestsrc frames to an H.264 (or H.265) file (.mp4/.mkv, or a raw
    .h264/.h265 stream). Raises VideoError naming the package when no encoder is installed."""
    from video.gst import registry_has
    from video.sinks import choose_encoder, mux_for
    from video.sources import quote

    require_gst()
    path = Path(path)
    enc = choose_encoder(registry_has, codec=codec)
    mux = mux_for(path)
    tail = f" ! {mux}" if mux else ""
    desc = (f"videotestsrc num-buffers={int(frames)} pattern={pattern} ! "
            f"video/x-raw,width={int(width)},height={int(height)},framerate={int(fps)}/1 ! videoconvert ! "
            f"{enc.chain}{tail} ! filesink location={quote(str(path))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    run_to_eos(desc)
    return path


def make_image_clip(images: list[str | Path], path: str | Path, *, frames: int | None = None, fps: int = 30,
                    hold: int = 1, codec: str = "h264") -> Path:
    """Encode still images (same size) as a video: each shown for `hold` frames, cycled until
    `frames` frames (default: each image once). Street-scene images make a clip in the networks'
    domain with realistic detail for the decoder, unlike videotestsrc's patterns (the moving
    ball compresses to almost nothing and decodes at thousands of frames per second)."""
    from PIL import Image

    from video.sinks import FileSink

    if not images:
        raise VideoError("no images to encode")
    if hold < 1:
        raise VideoError("--hold must be >= 1")
    total = frames or len(images) * hold
    sink = FileSink(path, fps=(int(fps), 1), codec=codec)
    size = None
    try:
        for i in range(total):
            p = images[(i // hold) % len(images)]
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"))
            if size is None:
                size = rgb.shape[:2]
                if size[0] % 2 or size[1] % 2:
                    raise VideoError(f"{p}: {size[1]}x{size[0]} has an odd side; 4:2:0 video needs even sizes")
            elif rgb.shape[:2] != size:
                raise VideoError(f"{p} is {rgb.shape[1]}x{rgb.shape[0]}, not {size[1]}x{size[0]} like the first image")
            sink.write(rgb)
    finally:
        sink.close()
    return Path(path)


__all__ = ["Frame", "FrameLayout", "VideoReader", "frame_view", "make_image_clip", "make_test_clip", "probe_codec", "run_to_eos",
           "package_for"]
