"""Decoder choice: `--decode auto|hw|sw` resolved against the GStreamer registry.

`auto` takes the first hardware decoder the registry has, in this order, else the software one:

    nvv4l2decoder   Jetson (JetPack's V4L2 NVDEC/NVJPG) and DeepStream on dGPUs; output in NVMM
                    memory, brought to system memory by nvvidconv (Jetson) or nvvideoconvert
                    (DeepStream)
    nvh264dec/nvh265dec     NVDEC through plugins-bad's nvcodec (x86 + NVIDIA driver)
    vah264dec/vah265dec     VA-API through plugins-bad's va plugin (Intel/AMD, GStreamer >= 1.20)
    vaapih264dec/vaapih265dec   the older gstreamer-vaapi plugin
    avdec_h264/avdec_h265   software (FFmpeg via gstreamer1.0-libav); openh264dec as a last
                            H.264 fallback

nvcodec and va register their elements only when a usable device is found, so "in the registry"
means "usable here" for them. `hw` with no hardware decoder is an error naming what to install;
`sw` never uses hardware. The choice (element, whether it is hardware, why) goes into the log and
into every video record.

The selection is pure (`choose_decoder(codec, mode, has)` takes the registry lookup as a
function) so it is tested with a faked registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from video.errors import VideoError
from video.gst import package_for

MODES = ("auto", "hw", "sw")
CODEC_NAMES = {"h264": "H.264", "h265": "H.265", "mjpeg": "MJPEG"}
HW_DECODERS = {
    "h264": ("nvv4l2decoder", "nvh264dec", "vah264dec", "vaapih264dec"),
    "h265": ("nvv4l2decoder", "nvh265dec", "vah265dec", "vaapih265dec"),
}
SW_DECODERS = {"h264": ("avdec_h264", "openh264dec"), "h265": ("avdec_h265",), "mjpeg": ("jpegdec",)}
HW_FAMILY = {"nvv4l2decoder": "NVIDIA V4L2 (Jetson / DeepStream)", "nvh264dec": "NVDEC (nvcodec)",
             "nvh265dec": "NVDEC (nvcodec)", "vah264dec": "VA-API (va)", "vah265dec": "VA-API (va)",
             "vaapih264dec": "VA-API (gstreamer-vaapi)", "vaapih265dec": "VA-API (gstreamer-vaapi)"}
HW_INSTALL = ("on Jetson JetPack's nvidia-l4t-gstreamer (nvv4l2decoder); on x86 with an NVIDIA GPU "
              "gstreamer1.0-plugins-bad and the NVIDIA driver (nvh264dec); on Intel/AMD "
              "gstreamer1.0-plugins-bad with intel-media-va-driver or mesa-va-drivers (vah264dec); "
              "or use --decode sw")


@dataclass(frozen=True)
class DecoderChoice:
    codec: str
    requested: str                  # auto | hw | sw
    element: str | None             # None: raw source, nothing to decode
    hardware: bool
    reason: str
    post: str = ""                  # after the decoder, before videoconvert (NVMM -> system memory)
    properties: tuple[tuple[str, str], ...] = ()
    platform: str = "generic"

    def as_dict(self) -> dict:
        return {"codec": self.codec, "requested": self.requested, "element": self.element,
                "hardware": self.hardware, "reason": self.reason, "post": self.post or None,
                "properties": dict(self.properties), "platform": self.platform}

    def log_line(self) -> str:
        what = self.element or "none (raw frames)"
        kind = "hardware" if self.hardware else ("software" if self.element else "no decoding")
        return f"decoder: {what} ({kind}; --decode {self.requested}; {self.reason})"


def detect_platform(has: Callable[[str], bool], tegra_release: str | Path = "/etc/nv_tegra_release") -> str:
    """jetson (L4T), deepstream (NVIDIA's V4L2 decoder on a dGPU machine) or generic."""
    if Path(tegra_release).exists():
        return "jetson"
    if has("nvv4l2decoder"):
        return "deepstream"
    return "generic"


def choose_decoder(codec: str, mode: str, has: Callable[[str], bool], *, platform: str | None = None) -> DecoderChoice:
    """The decoder for `codec` under `--decode mode`, given the registry lookup `has(name)`."""
    if mode not in MODES:
        raise VideoError(f"--decode {mode}: use one of {', '.join(MODES)}")
    platform = platform or detect_platform(has)
    if codec == "raw":
        return DecoderChoice(codec, mode, None, False, "raw frames from the source", platform=platform)
    if codec not in SW_DECODERS:
        raise VideoError(f"no decoder known for codec {codec!r}; use h264 or h265")
    if mode in ("auto", "hw"):
        for element in HW_DECODERS.get(codec, ()):
            if not has(element):
                continue
            post = ""
            if element == "nvv4l2decoder":  # NVMM output: convert to system-memory BGRx first
                conv = next((c for c in ("nvvidconv", "nvvideoconvert") if has(c)), None)
                if conv is None:
                    continue  # unusable without a converter (checked, not assumed)
                post = f"{conv} ! video/x-raw,format=BGRx"
            why = f"{HW_FAMILY.get(element, 'hardware')} found in the GStreamer registry"
            return DecoderChoice(codec, mode, element, True, why, post=post, platform=platform)
        if mode == "hw":
            if codec == "mjpeg":
                raise VideoError("--decode hw: hardware MJPEG decoding is not wired in this project; "
                                 "use --decode sw or auto (jpegdec)")
            looked = ", ".join(HW_DECODERS[codec])
            raise VideoError(f"--decode hw: no hardware {CODEC_NAMES[codec]} decoder in the GStreamer registry "
                             f"(looked for {looked}); install {HW_INSTALL}")
    for element in SW_DECODERS[codec]:
        if has(element):
            why = ("software decoding requested" if mode == "sw" else
                   "no hardware decoder in the GStreamer registry; software fallback")
            return DecoderChoice(codec, mode, element, False, why, platform=platform)
    first = SW_DECODERS[codec][0]
    raise VideoError(f"no {CODEC_NAMES[codec]} decoder in the GStreamer registry: "
                     f"'{first}' is missing; install {package_for(first)}")


def resolve(codec: str, mode: str) -> DecoderChoice:
    """`choose_decoder` against the real registry (needs GStreamer)."""
    from video.gst import registry_has, require_gst

    require_gst()
    return choose_decoder(codec, mode, registry_has)
