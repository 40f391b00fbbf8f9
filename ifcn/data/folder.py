"""A plain folder of images as an image table: proposals for your own photos, no annotations.

`image_table_from_folder(DIR)` lists every image file under DIR (by extension, any case;
hidden files and folders skipped), sorted by path relative to DIR, as ids 1..n with that
relative path as `file_name` and the size read from the image itself: the same shape as
`ifcn.data.instances.read_image_table`, so any stage that reads an image table takes a folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

from ifcn.errors import IfcnError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted by their path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IfcnError("no such folder of images", folder)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS):
                found.append(Path(root, name).relative_to(folder))
    return sorted(found, key=lambda path: path.as_posix())


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as decoding gives it (EXIF orientation ignored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise IfcnError(f"cannot read the image ({exc})", path) from None
    return height, width


def image_table_from_folder(folder: str | Path) -> dict[int, dict]:
    """Image entries by id (1..n in path order): file_name relative to `folder`, height, width."""
    files = image_files(folder)
    if not files:
        raise IfcnError(
            f"holds no image files ({', '.join(e.lstrip('.') for e in EXTENSIONS)})", folder
        )
    table = {}
    for image_id, relative in enumerate(files, start=1):
        height, width = image_size(Path(folder) / relative)
        table[image_id] = {"file_name": relative.as_posix(), "height": height, "width": width}
    return table
