"""video/: pipeline strings, decoder choice, stride-safe frames, plugins, and (with GStreamer) real pipelines.

The pure tests run everywhere. Tests that open pipelines skip with a reason when GStreamer or
PyGObject is missing; test clips are generated in tmp_path with videotestsrc -> H.264 encoder
(never committed), and skip when no H.264 encoder is installed.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from video import gst
from video.decoders import HW_DECODERS, DecoderChoice, choose_decoder, detect_platform
from video.errors import VideoError
from video.frames import frame_view
from video.measure import base_record, read_video_records, summarize_run, write_video_record
from video.plugins import (ENTRY_POINT_GROUP, PluginConfig, discover, draw_boxes, load_plugin, nearest_indices,
                           overlay_mask)
from video.sinks import choose_encoder, default_stride, mux_for, pack_rows
from video.sources import AppsinkSpec, build_pipeline, elements_of, parse_source, quote

NO_GST = "GStreamer / PyGObject not installed (README: Video pipelines, system packages)"


def gst_ok() -> bool:
    """Whether GStreamer works here. Asked when a test that needs it runs, not at import: Gst.init
    maps libunwind.so.8 into the process, which breaks OpenVINO's C++ exception handling for the
    rest of the pytest process (bench.backends.openvino then reports itself unavailable), so it
    must not happen while the other test modules are merely collected."""
    return gst.gst_available()[0]


needs_gst = pytest.mark.skipif("not gst_ok()", reason=NO_GST)


def registry(*names: str):
    """A fake GStreamer registry holding exactly `names`."""
    have = set(names)
    return lambda n: n in have


SW = registry("avdec_h264", "avdec_h265", "jpegdec")


# ------------------------------------------------------------------------------------------------
# sources and pipeline strings (pure)


def test_parse_source_kinds():
    assert parse_source("clip.mp4").kind == "file" and parse_source("clip.mp4").codec is None
    assert parse_source("clip.mkv", codec="h265").codec == "h265"
    assert parse_source("stream.h264").codec == "h264"          # raw elementary stream: codec from the name
    r = parse_source("rtsp://user:pw@cam.local:8554/live", codec="hevc")
    assert (r.kind, r.codec, r.live) == ("rtsp", "h265", True)
    assert "pw" not in json.dumps(r.describe()) and "pw" not in r.name
    assert parse_source("/dev/video2").location == "/dev/video2"
    assert parse_source("usb:1", codec="mjpeg").location == "/dev/video1"
    assert parse_source("csi:1").location == "1" and parse_source("csi").location == "0"
    t = parse_source("test:smpte", width=64, height=48, num_buffers=3)
    assert (t.kind, t.location, t.live) == ("test", "smpte", False)
    for bad in ("clip.avi", "http://x/y.mp4", "test:nope", "csi:a", ""):
        with pytest.raises(VideoError):
            parse_source(bad)
    with pytest.raises(VideoError, match="use h264, h265"):
        parse_source("clip.mp4", codec="vp9")


DECODERS = {
    "sw": DecoderChoice("h264", "sw", "avdec_h264", False, "test"),
    "jetson": DecoderChoice("h264", "hw", "nvv4l2decoder", True, "test", post="nvvidconv ! video/x-raw,format=BGRx"),
    "nvdec": DecoderChoice("h264", "hw", "nvh264dec", True, "test"),
    "va": DecoderChoice("h264", "hw", "vah264dec", True, "test"),
}
SOURCES = {
    "mp4": ("in dir/clip.mp4", "h264", ["filesrc location=\"in dir/clip.mp4\"", "qtdemux name=demux demux.video_0",
                                        "queue", "h264parse"]),
    "mkv": ("clip.mkv", "h264", ["matroskademux name=demux demux.video_0", "h264parse"]),
    "raw": ("clip.h264", "h264", ["filesrc", "h264parse"]),
    "rtsp": ("rtsp://cam/live", "h264", ["rtspsrc location=\"rtsp://cam/live\" latency=200", "rtph264depay",
                                         "h264parse"]),
}


@pytest.mark.parametrize("dec", sorted(DECODERS))
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_pipeline_strings_encoded_sources(kind, dec):
    spec, codec, parts = SOURCES[kind]
    choice = DECODERS[dec]
    src = parse_source(spec, codec=codec)
    desc = build_pipeline(src, choice)
    order = [desc.index(p) for p in parts + [choice.element]]
    assert order == sorted(order), desc
    assert desc.endswith("videoconvert ! video/x-raw,format=RGB ! appsink name=sink emit-signals=false sync=false "
                         + ("max-buffers=1 drop=true" if src.live else "max-buffers=4 drop=false"))
    if choice.post:  # NVMM output is brought to system memory right after the decoder
        assert f"{choice.element} ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert" in desc
    assert "demux" not in desc or kind in ("mp4", "mkv")


def test_pipeline_strings_h265_and_raw_sources():
    h265 = build_pipeline(parse_source("c.mp4", codec="h265"), DecoderChoice("h265", "sw", "avdec_h265", False, ""))
    assert "h265parse ! avdec_h265 ! videoconvert" in h265
    test = build_pipeline(parse_source("test:ball", width=96, height=64, fps=15, num_buffers=10), None)
    assert test.startswith("videotestsrc pattern=ball num-buffers=10 ! video/x-raw,width=96,height=64,framerate=15/1 ! "
                           "videoconvert ! video/x-raw,format=RGB ! appsink")
    usb = build_pipeline(parse_source("/dev/video0", width=640, height=480, fps=30), None)
    assert usb.startswith('v4l2src device="/dev/video0" ! video/x-raw,width=640,height=480,framerate=30/1 ! videoconvert')
    assert usb.endswith("max-buffers=1 drop=true")             # live: keep only the newest frame
    mjpeg = build_pipeline(parse_source("usb:0", codec="mjpeg", width=1280, height=720),
                           choose_decoder("mjpeg", "auto", SW))
    assert "image/jpeg,width=1280,height=720 ! jpegdec ! videoconvert" in mjpeg
    csi = build_pipeline(parse_source("csi:1"), None)
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,"
                          "framerate=30/1,format=NV12 ! nvvidconv flip-method=0 ! video/x-raw,format=BGRx ! videoconvert")
    with pytest.raises(VideoError, match="needs a decoder"):
        build_pipeline(parse_source("c.mp4", codec="h264"), None)
    assert elements_of(csi)[:3] == ["nvarguscamerasrc", "nvvidconv", "videoconvert"]
    assert AppsinkSpec.for_source(parse_source("c.mp4"), 8).element().endswith("max-buffers=8 drop=false")
    assert quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    weird = build_pipeline(parse_source('dir/a!b "c".mp4', codec="h264"), DECODERS["sw"])
    assert elements_of(weird)[:3] == ["filesrc", "qtdemux", "queue"]     # "!" inside the quoted path is not a link


# ------------------------------------------------------------------------------------------------
# decoder choice with a faked registry (pure)


@pytest.mark.parametrize("have, expected, hardware, post", [
    (("nvv4l2decoder", "nvvidconv", "avdec_h264"), "nvv4l2decoder", True, "nvvidconv ! video/x-raw,format=BGRx"),
    (("nvv4l2decoder", "nvvideoconvert", "avdec_h264"), "nvv4l2decoder", True, "nvvideoconvert ! video/x-raw,format=BGRx"),
    (("nvv4l2decoder", "nvh264dec", "avdec_h264"), "nvh264dec", True, ""),   # no NVMM converter: next one
    (("nvh264dec", "vah264dec", "avdec_h264"), "nvh264dec", True, ""),
    (("vah264dec", "vaapih264dec", "avdec_h264"), "vah264dec", True, ""),
    (("vaapih264dec", "avdec_h264"), "vaapih264dec", True, ""),
    (("avdec_h264",), "avdec_h264", False, ""),
    (("openh264dec",), "openh264dec", False, ""),
])
def test_choose_decoder_auto(have, expected, hardware, post):
    c = choose_decoder("h264", "auto", registry(*have), platform="generic")
    assert (c.element, c.hardware, c.post) == (expected, hardware, post)
    assert c.as_dict()["element"] == expected and expected in c.log_line()


def test_choose_decoder_hw_sw_and_errors():
    everything = registry(*HW_DECODERS["h264"], *HW_DECODERS["h265"], "nvvidconv", "avdec_h264", "avdec_h265")
    assert choose_decoder("h264", "sw", everything).element == "avdec_h264"       # sw never uses hardware
    assert choose_decoder("h265", "hw", registry("vah265dec", "avdec_h265")).element == "vah265dec"
    with pytest.raises(VideoError) as e:
        choose_decoder("h264", "hw", SW)
    msg = str(e.value)
    assert "\n" not in msg and "nvv4l2decoder" in msg and "vah264dec" in msg and "--decode sw" in msg
    with pytest.raises(VideoError, match="gstreamer1.0-libav"):
        choose_decoder("h264", "auto", registry())
    with pytest.raises(VideoError, match="MJPEG"):
        choose_decoder("mjpeg", "hw", SW)
    with pytest.raises(VideoError, match="--decode"):
        choose_decoder("h264", "fast", SW)
    raw = choose_decoder("raw", "hw", registry())
    assert raw.element is None and not raw.hardware


def test_detect_platform(tmp_path):
    tegra = tmp_path / "nv_tegra_release"
    assert detect_platform(registry(), tegra) == "generic"
    assert detect_platform(registry("nvv4l2decoder"), tegra) == "deepstream"
    tegra.write_text("# R35 (release), REVISION: 4.1")
    assert detect_platform(registry("nvv4l2decoder"), tegra) == "jetson"


# ------------------------------------------------------------------------------------------------
# frames: stride-safe conversion on a hand-made padded buffer (pure NumPy)


def test_frame_view_padded_rows_without_copy():
    h, w, stride, offset = 3, 5, 20, 7          # 15 bytes of pixels + 5 bytes of padding per row
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    raw = np.full(offset + stride * h, 0xEE, dtype=np.uint8)   # 0xEE marks padding
    for y in range(h):
        raw[offset + y * stride: offset + y * stride + w * 3] = pixels[y].reshape(-1)
    view = frame_view(raw.tobytes(), w, h, stride, offset=offset)
    np.testing.assert_array_equal(view, pixels)
    assert not view.flags.writeable
    arr_view = frame_view(raw, w, h, stride, offset=offset)
    assert np.shares_memory(arr_view, raw)                  # no copy
    # The last row needs no trailing padding (GStreamer may cut the buffer after the pixels).
    np.testing.assert_array_equal(frame_view(raw[: offset + stride * (h - 1) + w * 3], w, h, stride, offset=offset), pixels)
    with pytest.raises(ValueError, match="needs"):
        frame_view(raw[:40], w, h, stride, offset=offset)
    with pytest.raises(ValueError, match="bad frame layout"):
        frame_view(raw, w, h, stride=10)


def test_pack_rows_round_trip_with_gstreamer_default_stride():
    frame = np.arange(3 * 97 * 3, dtype=np.uint8).reshape(3, 97, 3)
    assert default_stride(97) == 292 and default_stride(96) == 288
    data = pack_rows(frame)
    assert len(data) == 3 * 292
    np.testing.assert_array_equal(frame_view(data, 97, 3, 292), frame)


# ------------------------------------------------------------------------------------------------
# drawing and plugins (pure)


def test_overlay_and_boxes():
    frame = np.full((4, 6, 3), 100, np.uint8)
    palette = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    mask = np.array([[0, 1, 1], [1, 0, 7]], np.uint8)           # 7: beyond the palette -> last colour
    np.testing.assert_array_equal(overlay_mask(frame, mask, palette, alpha=0.0), frame)
    full = overlay_mask(frame, mask, palette, alpha=1.0)
    assert full.shape == frame.shape and full.dtype == np.uint8
    np.testing.assert_array_equal(full[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(full[0, 2], [255, 0, 0])     # nearest neighbour: pixel 2 <- mask column 1
    np.testing.assert_array_equal(full[3, 5], [255, 0, 0])
    np.testing.assert_array_equal(nearest_indices(6, 3), [0, 0, 1, 1, 2, 2])
    boxed = draw_boxes(np.zeros((20, 20, 3), np.uint8), np.array([[2, 3, 10, 12, 0.9, 1]]), palette, thickness=1)
    assert (boxed[3, 2:11] == [255, 0, 0]).all() and (boxed[3:13, 10] == [255, 0, 0]).all()
    assert (boxed[5, 5] == 0).all()                              # inside stays untouched


class FakePlugin:
    """A third-party plugin as an entry point would provide it."""

    name = "fake"

    def __init__(self, config: PluginConfig):
        self.config = config

    def load(self, log):
        log("fake loaded")

    def preprocess(self, frame):
        return frame.mean(axis=2, keepdims=True)

    def infer(self, inputs):
        return inputs > 128

    def postprocess(self, outputs, inputs, frame):
        return outputs[..., 0]

    def draw(self, frame, result):
        out = np.array(frame)
        out[result] = 255
        return out

    def describe(self):
        return {"plugin": self.name, "model": "threshold", "variant": "fp32", "backend": "numpy"}


class Incomplete:
    def __init__(self, config):
        pass


def _fake_entry_points(*eps):
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        if kw.get("group") == ENTRY_POINT_GROUP:
            return list(eps)
        return real(**kw)

    return entry_points


def test_plugin_discovery_through_entry_points(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="fake", value="tests.test_video:FakePlugin", group=ENTRY_POINT_GROUP)
    same_builtin = importlib.metadata.EntryPoint(name="zoo", value="video.plugins:ZooPlugin", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep, same_builtin))
    found = discover()
    assert set(found) == {"zoo", "fake"}
    plugin = load_plugin("fake", PluginConfig(model="threshold"))
    assert isinstance(plugin, FakePlugin) and plugin.config.model == "threshold"
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[0, 0] = 200
    result = plugin.postprocess(plugin.infer(plugin.preprocess(frame)), None, frame)
    assert result.sum() == 1 and plugin.draw(frame, result)[0, 0, 0] == 255
    with pytest.raises(VideoError, match="unknown video plugin 'nope'; installed: fake, zoo"):
        load_plugin("nope", PluginConfig())


def test_plugin_discovery_errors(monkeypatch):
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz:Plugin", group=ENTRY_POINT_GROUP)
    incomplete = importlib.metadata.EntryPoint(name="inc", value="tests.test_video:Incomplete", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(broken, incomplete))
    with pytest.raises(VideoError, match="failed to import: ModuleNotFoundError"):
        load_plugin("broken", PluginConfig())
    with pytest.raises(VideoError, match="lacks load, preprocess"):
        load_plugin("inc", PluginConfig())
    clash = importlib.metadata.EntryPoint(name="zoo", value="other_pkg:Zoo", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(clash))
    with pytest.raises(VideoError, match="two video plugins are named 'zoo'"):
        discover()


# ------------------------------------------------------------------------------------------------
# measurement and records (pure)


def test_summarize_run_and_record(tmp_path):
    # 6 frames, 10 ms apart; 2 warm-up frames; infer 6 ms of each 10 ms frame; 4 ms CPU per frame.
    ends = [0.010 * (i + 1) for i in range(6)]
    cpus = [0.004 * (i + 1) for i in range(6)]
    stages = {"decode_wait": [1.0] * 6, "pre": [1.0] * 6, "infer": [6.0] * 6, "post": [1.0] * 6, "draw": [], "output": []}
    s = summarize_run(stages, ends, cpus, 0.0, 0.0, warmup=2)
    assert (s["frames"], s["measured_frames"], s["warmup_frames"]) == (6, 4, 2)
    assert s["fps"] == pytest.approx(100.0) and s["cpu_ms_per_frame"] == pytest.approx(4.0)
    assert s["cpu_cores_used"] == pytest.approx(0.4) and s["overhead_pct"] == pytest.approx(40.0)
    assert set(s["stages_ms"]) == {"decode_wait", "pre", "infer", "post"} and s["stages_ms"]["infer"]["n"] == 4
    assert s["stage_overhead_pct"] == pytest.approx(100 * 3 / 9)
    short = summarize_run(stages, ends, cpus, 0.0, 0.0, warmup=10)   # too short: everything measured, noted
    assert short["measured_frames"] == 6 and "warm-up frames are included" in short["note"]
    rec = base_record("video-decode", model="decode-only", variant="hw", status="skipped", error="no hw decoder")
    path = write_video_record(tmp_path, rec)
    assert path.name.startswith("decode-only__hw__-__-") and json.loads(path.read_text())["kind"] == "video-decode"
    (tmp_path / "cell.json").write_text(json.dumps({"schema": 2, "model": "m", "variant": "fp32", "backend": "torch",
                                                   "dataset": "d", "split": "val", "status": "ok", "error": None}))
    assert [r["kind"] for r in read_video_records(tmp_path)] == ["video-decode"]   # benchmark cells are not video
    with pytest.raises(ValueError, match="kind"):
        write_video_record(tmp_path, {**rec, "kind": "cell"})


def test_encoder_and_muxer_choice():
    assert choose_encoder(registry("x264enc", "openh264enc", "avenc_mpeg4")).element == "x264enc"
    assert choose_encoder(registry("openh264enc")).chain.startswith("video/x-raw,format=I420 ! openh264enc")
    assert choose_encoder(registry("avenc_mpeg4")).codec == "mpeg4"
    with pytest.raises(VideoError, match="gstreamer1.0-plugins-ugly"):
        choose_encoder(registry())
    assert (mux_for("a.mp4"), mux_for("a.MKV"), mux_for("a.h264")) == ("mp4mux", "matroskamux", None)
    with pytest.raises(VideoError):
        mux_for("a.gif")


def test_display_sink_without_display(monkeypatch):
    from video.sinks import make_sink

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(VideoError, match="needs a display"):
        make_sink("display")


def test_package_imports_and_cli_without_gstreamer(tmp_path):
    """With `gi` unimportable, the package imports, reports why, and the CLI exits 2 in one line."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['gi'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(REPO)])}
    code = ("import video, video.sources, video.decoders, video.frames, video.sinks, video.plugins, video.measure, "
            "video.pipeline, video.run\nfrom video import gst\nok, why = gst.gst_available()\n"
            "assert not ok and why.startswith('GStreamer / PyGObject not installed'), why\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "video.run", "--source", "clip.mp4"], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: GStreamer / PyGObject not installed")
    assert "apt-get install" in lines[0]


# ------------------------------------------------------------------------------------------------
# with GStreamer: real pipelines


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 10-frame 64x96 H.264 MP4 made at test time (skips when no H.264 encoder is installed)."""
    if not gst_ok():
        pytest.skip(NO_GST)
    if not (gst.registry_has("x264enc") or gst.registry_has("openh264enc")):
        pytest.skip("no H.264 encoder (x264enc: gstreamer1.0-plugins-ugly; openh264enc: gstreamer1.0-plugins-bad)")
    from video.frames import make_test_clip

    return make_test_clip(tmp_path_factory.mktemp("clip") / "tiny.mp4", width=96, height=64, frames=10)


@needs_gst
def test_videotestsrc_frames_padded_rows_and_eos():
    from video.frames import VideoReader

    src = parse_source("test:gradient", width=97, height=31, num_buffers=7)   # 97 * 3 = 291: rows padded to 292
    frames = {}
    for zero_copy in (True, False):
        with VideoReader(build_pipeline(src, None), source=src, zero_copy=zero_copy) as reader:
            got = []
            for f in reader:
                assert f.rgb.shape == (31, 97, 3) and f.rgb.dtype == np.uint8 and not f.rgb.flags.writeable
                assert f.zero_copy is zero_copy
                got.append(f.rgb.copy())
                f.release()
            assert reader.read() is None                          # EOS: iteration ended cleanly, stays ended
            assert reader.stats.frames == 7 and len(reader.stats.wait_ms) == 7
            assert reader.layout.stride == 292 and reader.layout.fps == (30, 1)
        assert reader.pipeline is None                            # closed (state NULL) by the context manager
        frames[zero_copy] = got
    assert len(frames[True]) == 7
    for a, b in zip(frames[True], frames[False]):
        np.testing.assert_array_equal(a, b)                       # the zero-copy view reads the same pixels


@needs_gst
def test_missing_file_and_elements_give_one_line_errors(tmp_path):
    from video.frames import VideoReader
    from video.pipeline import VideoConfig, resolve_pipeline

    with pytest.raises(VideoError, match=r"^no such video file: .*missing\.mp4$"):
        resolve_pipeline(VideoConfig(source=str(tmp_path / "missing.mp4")), lambda m: None)
    src = parse_source(str(tmp_path / "missing.mp4"), codec="h264")
    with pytest.raises(VideoError, match="no such video file"):
        VideoReader(build_pipeline(src, DECODERS["sw"]), source=src).open()
    if not gst.registry_has("nvv4l2decoder"):  # a Jetson pipeline elsewhere: names what to install
        with pytest.raises(VideoError, match="'nvv4l2decoder' is not installed: install JetPack's nvidia-l4t-gstreamer"):
            VideoReader(build_pipeline(parse_source("x.h264"), DECODERS["jetson"])).open()
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    src = parse_source(str(bad), codec="h264")
    with pytest.raises(VideoError) as e:
        with VideoReader(build_pipeline(src, DECODERS["sw"]), source=src) as reader:
            list(reader)
    assert "\n" not in str(e.value) and "qtdemux" in str(e.value)


@needs_gst
def test_unreachable_rtsp_url_gives_one_line_error():
    from video.frames import VideoReader

    src = parse_source("rtsp://user:secret@127.0.0.1:1/none", codec="h264")   # nothing listens on port 1
    with pytest.raises(VideoError) as e:
        with VideoReader(build_pipeline(src, DECODERS["sw"]), source=src, first_frame_timeout=20) as reader:
            list(reader)
    msg = str(e.value)
    assert msg.startswith("RTSP source rtsp://***@127.0.0.1:1/none") and "check the URL" in msg
    assert "\n" not in msg and "secret" not in msg


@needs_gst
def test_cli_missing_file_exit_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "video.run", "--source", str(tmp_path / "nope.mp4"),
                          "--weights", "random"], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: no such video file: {tmp_path / 'nope.mp4'}"]


@needs_gst
def test_decode_clip_and_hw_vs_sw_comparison(clip, tmp_path):
    from video.measure import decode_benchmark

    recs = decode_benchmark(str(clip), modes=("sw", "hw"), warmup=2, out=tmp_path, log=lambda m: None)
    sw, hw = recs
    assert sw["status"] == "ok" and sw["backend"] == "avdec_h264" and not sw["decoder"]["hardware"]
    assert sw["frames"] == 10 and sw["input_hw"] == [64, 96] and sw["fps"] > 0 and sw["cpu_ms_per_frame"] > 0
    if not any(gst.registry_has(e) for e in HW_DECODERS["h264"]):
        assert hw["status"] == "skipped" and "no hardware H.264 decoder" in hw["error"]
    assert len(read_video_records(tmp_path)) == 2


@pytest.fixture(scope="module")
def video_artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("video-artifacts")


@needs_gst
def test_video_run_fake_sink_writes_record(clip, tmp_path, video_artifacts):
    out = tmp_path / "records"
    res = subprocess.run([sys.executable, "-m", "video.run", "--source", str(clip), "--model", "ddrnet",
                          "--quant", "fp32", "--backend", "onnxruntime", "--weights", "random", "--input-size", "64x96",
                          "--sink", "fake", "--warmup-frames", "2", "--threads", "1", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO), "EDGEZOO_ARTIFACTS": str(video_artifacts)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FPS" in res.stdout and "CPU ms/frame" in res.stdout
    (rec,) = read_video_records(out)
    assert rec["kind"] == "video" and rec["status"] == "ok" and rec["model"] == "ddrnet23_slim"
    assert (rec["frames"], rec["measured_frames"], rec["warmup_frames"]) == (10, 8, 2)
    assert rec["decoder"]["element"] == "avdec_h264" and rec["input_hw"] == [64, 96]
    assert rec["frame_layout"]["width"] == 96 and rec["frame_layout"]["height"] == 64
    assert rec["fps"] > 0 and rec["cpu_ms_per_frame"] > 0 and 0 <= rec["overhead_pct"] <= 100
    assert set(rec["stages_ms"]) == {"decode_wait", "pre", "infer", "post", "other"}   # fake sink: nothing drawn
    assert 0 <= rec["stage_overhead_pct"] <= 100
    assert rec["stages_ms"]["infer"]["n"] == 8 and rec["zero_copy"] is True
    assert rec["env"]["git"] is not None and rec["gst"]["gstreamer"]


@needs_gst
def test_video_run_file_sink_writes_annotated_video(clip, tmp_path, video_artifacts, monkeypatch):
    from video.frames import VideoReader
    from video.pipeline import VideoConfig, run_video

    monkeypatch.setenv("EDGEZOO_ARTIFACTS", str(video_artifacts))
    out_video = tmp_path / "annotated.mp4"
    cfg = VideoConfig(source=str(clip), sink="file", output=str(out_video), warmup_frames=2, out=None,
                      model=PluginConfig(model="ddrnet", weights="random", input_hw=(64, 96), threads=1, progress=False))
    rec = run_video(cfg, log=lambda m: None)
    assert rec["status"] == "ok" and rec["sink"]["frames_written"] == 10 and "_path" not in rec
    assert {"draw", "output"} <= set(rec["stages_ms"])
    src = parse_source(str(out_video), codec="h264")
    with VideoReader(build_pipeline(src, choose_decoder("h264", "sw", gst.registry_has)), source=src) as reader:
        shapes = [f.rgb.shape for f in reader]
    assert shapes == [(64, 96, 3)] * 10


@pytest.mark.parametrize("src_hw, out_hw", [((45, 60), (360, 480)), ((8, 12), (64, 96)), ((7, 13), (30, 50)),
                                            ((64, 96), (64, 96))])
def test_upsample_argmax_matches_bench_postprocess(src_hw, out_hw):
    from bench.imageops import postprocess
    from video.plugins import upsample_argmax

    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((1, 11, *src_hw)) * 4).astype(np.float32)
    logits[0, 3, :2, :2] = logits[0, 5, :2, :2] = 50.0          # exact ties: the lower class wins, as argmax
    fast, ref = upsample_argmax(logits, out_hw), postprocess(logits, out_hw)[0]
    assert fast.shape == out_hw and fast.dtype == np.uint8
    assert (fast == ref).mean() >= 0.999                          # float rounding may flip a near-tie pixel
    assert fast[0, 0] == 3


@pytest.mark.parametrize("bgr", [False, True])
def test_normalize_into_is_bit_exact_with_bench_preprocessor(bgr):
    from bench.imageops import Preprocessor
    from video.plugins import normalize_into

    pre = Preprocessor({"mean": [103.5, 116.2, 123.7], "std": [57.1, 57.4, 58.4], "bgr": bgr}, (30, 50))
    img = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = np.empty((1, 3, 30, 50), np.float32)
    got = normalize_into(img[:, ::-1][:, ::-1], pre.a, pre.b, pre.bgr, out)   # a strided view works too
    assert got is out
    np.testing.assert_array_equal(got, pre([img]))
