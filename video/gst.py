"""Lazy access to GStreamer through PyGObject, and what to install when something is missing.

Nothing here imports `gi` at module level: the package must import (and its pure parts be
tested) on machines without GStreamer. `require_gst()` imports and initialises it once and
raises `GstUnavailable` with the install command otherwise.
"""
from __future__ import annotations

import functools
import os
from typing import Any

from video.errors import GstUnavailable, VideoError

# Debian/Ubuntu package that provides each element (x86 and arm64 Debian; Jetson's NVIDIA
# elements come with JetPack, DeepStream's with the DeepStream SDK).
ELEMENT_PACKAGES = {
    # core
    "filesrc": "libgstreamer1.0-0", "filesink": "libgstreamer1.0-0", "queue": "libgstreamer1.0-0",
    "fakesink": "libgstreamer1.0-0", "capsfilter": "libgstreamer1.0-0",
    # base
    "videoconvert": "gstreamer1.0-plugins-base", "videoscale": "gstreamer1.0-plugins-base",
    "videotestsrc": "gstreamer1.0-plugins-base", "appsink": "gstreamer1.0-plugins-base",
    "appsrc": "gstreamer1.0-plugins-base", "decodebin": "gstreamer1.0-plugins-base",
    "parsebin": "gstreamer1.0-plugins-base", "ximagesink": "gstreamer1.0-x",
    # good
    "qtdemux": "gstreamer1.0-plugins-good", "matroskademux": "gstreamer1.0-plugins-good",
    "mp4mux": "gstreamer1.0-plugins-good", "matroskamux": "gstreamer1.0-plugins-good",
    "rtspsrc": "gstreamer1.0-plugins-good", "rtph264depay": "gstreamer1.0-plugins-good",
    "rtph265depay": "gstreamer1.0-plugins-good", "v4l2src": "gstreamer1.0-plugins-good",
    "jpegdec": "gstreamer1.0-plugins-good", "jpegparse": "gstreamer1.0-plugins-bad",
    "autovideosink": "gstreamer1.0-plugins-good",
    # bad
    "h264parse": "gstreamer1.0-plugins-bad", "h265parse": "gstreamer1.0-plugins-bad",
    "mpeg4videoparse": "gstreamer1.0-plugins-bad", "tsdemux": "gstreamer1.0-plugins-bad",
    "openh264enc": "gstreamer1.0-plugins-bad", "openh264dec": "gstreamer1.0-plugins-bad",
    "vah264dec": "gstreamer1.0-plugins-bad and a VA-API driver (intel-media-va-driver or mesa-va-drivers)",
    "vah265dec": "gstreamer1.0-plugins-bad and a VA-API driver (intel-media-va-driver or mesa-va-drivers)",
    "nvh264dec": "gstreamer1.0-plugins-bad and the NVIDIA driver (NVDEC)",
    "nvh265dec": "gstreamer1.0-plugins-bad and the NVIDIA driver (NVDEC)",
    # ugly / libav / vaapi
    "x264enc": "gstreamer1.0-plugins-ugly",
    "avdec_h264": "gstreamer1.0-libav", "avdec_h265": "gstreamer1.0-libav", "avenc_mpeg4": "gstreamer1.0-libav",
    "vaapih264dec": "gstreamer1.0-vaapi", "vaapih265dec": "gstreamer1.0-vaapi",
    # NVIDIA (not in Debian)
    "nvv4l2decoder": "JetPack's nvidia-l4t-gstreamer (Jetson) or the DeepStream SDK (dGPU)",
    "nvvidconv": "JetPack's nvidia-l4t-gstreamer (Jetson)",
    "nvvideoconvert": "the DeepStream SDK",
    "nvarguscamerasrc": "JetPack's nvidia-l4t-gstreamer and nvidia-l4t-camera (Jetson CSI cameras)",
}

APT_PACKAGES = ("gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad "
                "gstreamer1.0-plugins-ugly gstreamer1.0-libav gir1.2-gst-plugins-base-1.0 gir1.2-gstreamer-1.0")
INSTALL_HINT = (f"apt-get install {APT_PACKAGES} python3-gi (system Python), or for a venv also "
                "libgirepository1.0-dev libcairo2-dev pkg-config python3-dev and pip install 'edgezoo[video]'")


def package_for(element: str) -> str:
    return ELEMENT_PACKAGES.get(element, "the GStreamer plugin that provides it (gst-inspect-1.0 lists what is installed)")


def missing_element_error(element: str) -> VideoError:
    return VideoError(f"GStreamer element '{element}' is not installed: install {package_for(element)}")


@functools.lru_cache(maxsize=1)
def _import() -> tuple[Any, Any, str]:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstVideo", "1.0")
        from gi.repository import Gst, GstVideo
    except (ImportError, ValueError) as exc:  # ValueError: typelib missing (gir1.2-* package)
        raise GstUnavailable(f"GStreamer / PyGObject not installed ({type(exc).__name__}: {exc}); {INSTALL_HINT}") from None
    Gst.init(None)
    return Gst, GstVideo, getattr(gi, "__version__", "?")


def gst_available() -> tuple[bool, str]:
    """(usable, reason when not); never raises."""
    try:
        _import()
    except GstUnavailable as exc:
        return False, str(exc)
    return True, ""


def require_gst() -> Any:
    """The initialised `Gst` module, or GstUnavailable with what to install."""
    return _import()[0]


def require_gstvideo() -> Any:
    return _import()[1]


def versions() -> dict[str, str | None]:
    ok, _ = gst_available()
    if not ok:
        return {"gstreamer": None, "pygobject": None}
    Gst, _, gi_version = _import()
    return {"gstreamer": ".".join(map(str, Gst.version())), "pygobject": gi_version}


def registry_has(name: str) -> bool:
    """Whether the GStreamer registry has an element factory `name` (False without GStreamer)."""
    ok, _ = gst_available()
    if not ok:
        return False
    return require_gst().ElementFactory.find(name) is not None


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
