"""The image files a COCO JSON lists: present, complete, and of the size the JSON records.

`image_fault` checks a file as far as a damaged file can be told without decoding its pixels:
the header (format, size) by Pillow; for JPEG, an end-of-image marker after the start of the
scans (a truncated file, the usual damage, has none: a full decode refuses it as "truncated"
too, while flipped bits inside the scans decode to wrong pixels without an error, in either
case), looked for from the end of the file, mapped, so that only its last pages are read; for
PNG, every chunk's CRC through IEND (Pillow's `verify`); any other format, and pixels that the
one loader judges by their values (32-bit integers, floats), is decoded by its rules. Decoding
COCO's 118k images takes about ten CPU minutes, this check some tens of microseconds each.
Every image is decoded anyway when a stage uses it, and its size compared again then.

`image_stats` records each file's size and modification time when the check passes, so that
a later stage re-checks only the files that changed since (`changed_images`).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from ifcn.data.image import open_image, rgb8
from ifcn.errors import IfcnError

# JPEG markers: start of image, start of scan, end of image; markers without a length field.
_SOI, _SOS, _EOI = b"\xff\xd8", 0xDA, b"\xff\xd9"
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# modes whose pixels the loader scales or refuses by their values: decoded to check them
_DECODED_MODES = ("I", "I;32", "I;32S", "F")


def _scan_start(data: bytes | mmap.mmap) -> int:
    """Offset of the first start-of-scan segment of a JPEG, walking the segments from the
    start (an EXIF thumbnail inside an APP segment has its own SOS and EOI: skipped)."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise OSError(f"broken JPEG segment at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker == _SOS:
            return position
        elif marker in _STANDALONE:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    raise OSError("image file is truncated (no start of scan)")


def image_fault(path: str | os.PathLike, height: int, width: int) -> str | None:
    """Why the image file at `path` is not a complete image of height × width, or None.

    Opened as every stage opens it (`ifcn.data.image.open_image`: regular files only, so a
    FIFO named like a photo is refused, not waited on), and pixels that the one loader refuses
    (32-bit integers, floats outside [0, 1]) are refused here too."""
    try:
        with open_image(path) as image:
            if image.size != (width, height):
                w, h = image.size
                return f"file is {w}x{h}, the JSON says {width}x{height}"
            if image.mode in _DECODED_MODES or image.format not in ("JPEG", "PNG"):
                rgb8(image, path)
            elif image.format == "JPEG":
                # mapped: the marker is found from the end, touching only the last pages
                with mmap.mmap(image.fp.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    if data.rfind(_EOI) < _scan_start(data):
                        raise OSError("image file is truncated (no end-of-image marker)")
            else:
                image.verify()
    except IfcnError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        return "file not found" if reason == "image file not found" else f"unreadable ({reason})"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable ({exc})"
    return None


def image_stats(paths: Iterable[str | os.PathLike]) -> np.ndarray:
    """[n, 2] int64 size and modification time (ns) of each file; -1 where it cannot be read.
    `paths` may be a generator: COCO's 118k paths need not be held at once."""
    return np.fromiter(map(_stat, paths), np.dtype((np.int64, 2))).reshape(-1, 2)


def _stat(path: str | os.PathLike) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def changed_images(paths: Sequence[str | os.PathLike], recorded: np.ndarray) -> np.ndarray:
    """Indices of the files whose size or modification time is not the recorded one (missing
    files and files never recorded, -1, included)."""
    now = image_stats(paths)
    return np.flatnonzero((now != recorded).any(1) | (recorded < 0).any(1) | (now < 0).any(1))


def image_item(item: tuple[str, int, int]) -> tuple[str | None, list[int]]:
    """For a map over (path, height, width): the file's `image_fault` and its `image_stats`."""
    path, height, width = item
    stats = image_stats([path])[0].tolist()
    return image_fault(path, height, width), stats
