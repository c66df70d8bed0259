"""A minimal, fast PNG writer for the synthetic dataset generator.

Pillow's PNG encoder spends ~15 ms on a noisy 480x360 RGB frame (adaptive per-row filter search
plus full deflate), which alone would break the generator's 50 images/s budget. Photos with
sensor noise barely benefit from LZ77 matching, so a single vectorised "Up" filter followed by
Huffman-only deflate gives nearly the same file size at ~3 ms. The output is a standard PNG
(read back by Pillow, OpenCV, browsers) and the test suite checks the round trip.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(array: np.ndarray, *, photo: bool | None = None) -> bytes:
    """PNG bytes for an HxW uint8 / uint16 or HxWx3 uint8 array.

    ``photo`` selects Huffman-only deflate (fast, right for noisy images); label and instance
    maps are mostly flat, so they get normal (fast level) deflate, which shrinks them ~80x.
    """
    a = np.ascontiguousarray(array)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        color_type, depth = 2, 8
    elif a.ndim == 2 and a.dtype == np.uint8:
        color_type, depth = 0, 8
    elif a.ndim == 2 and a.dtype == np.uint16:
        color_type, depth = 0, 16
    else:
        raise ValueError(f"encode_png supports HxW uint8/uint16 and HxWx3 uint8, got "
                         f"{a.shape} {a.dtype}")
    h, w = a.shape[:2]
    rows = (a.astype(">u2") if depth == 16 else a).view(np.uint8).reshape(h, -1)
    if photo is None:
        photo = color_type == 2
    filtered = np.empty((h, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # filter type "Up": difference to the row above (uint8 wrap-around)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    if photo:
        comp = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    else:
        comp = zlib.compressobj(3, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY)
    data = comp.compress(filtered.tobytes()) + comp.flush()
    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def write_png(path: str | os.PathLike, array: np.ndarray, *, photo: bool | None = None) -> None:
    Path(path).write_bytes(encode_png(array, photo=photo))
