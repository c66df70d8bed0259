"""A minimal, fast PNG writer for the synthetic dataset generator.

Pillow's PNG encoder spends ~15 ms on a noisy 480x360 RGB frame (adaptive per-row filter search
plus full deflate), which alone would break the generator's 50 images/s budget (issue #2).
Photos with sensor noise barely compress: Huffman-only deflate after an "Up" filter saves ~35%
of the bytes but costs ~3 ms (AVX-512) to ~7 ms (AVX2 Zen 3) of zlib per frame, a third of the
whole per-image budget on the slower machine. Photos are therefore stored (deflate level 0:
~0.5 ms to write, 0.52 MB per 480x360 frame, and ~5x faster for Pillow to decode when training
reads them back); label and instance maps are mostly flat and still get an "Up" filter and
run-length deflate, which shrinks them 50-100x. The output is a standard PNG (read back by
Pillow, OpenCV, browsers) and the test suite checks the round trip.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> list[bytes]:
    """Length, type, data and CRC of one chunk, as parts to join (no copy of the data here)."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return [struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)]


def encode_png(array: np.ndarray, *, photo: bool | None = None) -> bytes:
    """PNG bytes for an HxW uint8 / uint16 or HxWx3 uint8 array.

    ``photo`` (default: True for RGB) stores the pixels unfiltered and uncompressed (noisy
    images barely compress, see the module docstring); otherwise the rows get the "Up" filter
    and run-length deflate, right for label and instance maps.
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
    if photo:
        filtered[:, 0] = 0  # filter type "None"
        filtered[:, 1:] = rows
        comp = zlib.compressobj(0)  # stored blocks
    else:
        filtered[:, 0] = 2  # filter type "Up": difference to the row above (uint8 wrap-around)
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        # runs of zeros (flat areas, rows equal to the one above) are all there is to find;
        # RLE needs no hash chains, and a small memLevel (4) measured fastest on these maps
        comp = zlib.compressobj(1, zlib.DEFLATED, 15, 4, zlib.Z_RLE)
    data = comp.compress(filtered) + comp.flush()  # zlib reads the array's buffer directly
    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return b"".join([_SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"IDAT", data),
                     *_chunk(b"IEND", b"")])


def write_png(path: str | os.PathLike, array: np.ndarray, *, photo: bool | None = None) -> None:
    Path(path).write_bytes(encode_png(array, photo=photo))
