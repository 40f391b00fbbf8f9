"""A plain folder of images as an image table: proposals for your own photos, no annotations.

`image_table_from_folder(DIR)` lists every image file under DIR (by extension, any case;
hidden files and folders skipped; symbolic links to folders followed, each folder listed once,
so a link to an ancestor ends), sorted by path relative to DIR, as ids 1..n with that relative
path as `file_name` and the size read from the image itself: the same shape as
`ifcn.data.instances.read_image_table`, so any stage that reads an image table takes a folder.
A name that is not a regular file (a FIFO named like a photo) is refused, naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ifcn.data.image import open_image
from ifcn.errors import IfcnError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted by their path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IfcnError("no such folder of images", folder)
    found = []
    seen = {_identity(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for name in dirs:
            identity = _identity(Path(root, name))
            if not name.startswith(".") and identity not in seen:
                seen.add(identity)
                kept.append(name)
        dirs[:] = kept
        for name in files:
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS):
                found.append(Path(root, name).relative_to(folder))
    return sorted(found, key=lambda path: path.as_posix())


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, through links; None for a link that leads nowhere."""
    try:
        info = folder.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as decoding gives it (EXIF orientation ignored)."""
    with open_image(path) as image:
        width, height = image.size
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
