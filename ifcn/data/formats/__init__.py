"""Readers of the datasets' own formats, each turning one into COCO instances JSON.

One module per source format (voc, sbd, pennfudan, coco); what they share lives here: the result
type, the reading of index-map PNGs and image sizes, split lists, and the parallel map over images.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ifcn.data.image import open_image
from ifcn.errors import IfcnError
from ifcn.pool import Pool
from ifcn.progress import progress_bar
from ifcn.signals import worker_process

if TYPE_CHECKING:  # ifcn.data.masks uses map_images below
    from ifcn.data.masks import MaskTable

# PASCAL VOC's 20 classes; category id = index + 1, as in SegmentationClass and SBD.
VOC_CLASSES = tuple(
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike "
    "person pottedplant sheep sofa train tvmonitor".split()
)

# VOC marks the boundary band of every object (and unlabelled "difficult" regions) with 255.
VOID = 255

_VOC_NAME = re.compile(r"^(\d{4})_(\d{6})$")


@dataclass
class Converted:
    """A converted dataset: the COCO dict, the folder its file names are relative to, and one
    line per thing the conversion changed or found worth saying."""

    dataset: dict
    image_root: Path
    notes: list[str] = field(default_factory=list)
    masks: MaskTable | None = None  # of dataset['annotations'], when the converter made it


def voc_categories() -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": "voc"} for i, n in enumerate(VOC_CLASSES)]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    with open_image(path) as im:
        return im.size


def read_index_png(path: Path, image_path: Path, size: tuple[int, int]) -> np.ndarray:
    """H×W array of the indices of a palette (or grey) PNG whose size must equal its image's."""
    if not path.exists():
        raise IfcnError("mask file not found", path)
    try:
        with open_image(path) as im:
            if im.mode not in ("P", "L"):
                raise IfcnError(f"expected a palette PNG of indices, got mode {im.mode}", path)
            if im.size != size:
                raise IfcnError(
                    f"mask size {im.size[0]}x{im.size[1]} differs from its image "
                    f"{image_path.name} ({size[0]}x{size[1]})",
                    path,
                )
            return np.asarray(im)
    except OSError as exc:
        raise IfcnError(f"cannot read mask ({exc})", path) from None


def read_name_list(path: Path) -> list[str]:
    """Image names of a split list (one per line, as VOC's ImageSets and SBD's train.txt)."""
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        raise IfcnError("split list not found", path) from None
    return [line.strip() for line in lines if line.strip()]


def apply_exclude(names: list[str], exclude: Path | None, notes: list[str]) -> list[str]:
    """Drop the names listed in `exclude` (e.g. VOC 2012 seg val from SBD train) and say so."""
    if exclude is None:
        return names
    drop = set(read_name_list(exclude))
    kept = [n for n in names if n not in drop]
    notes.append(f"excluded {len(names) - len(kept)} images listed in {exclude}")
    return kept


def name_image_ids(names: list[str]) -> list[int]:
    """Integer image ids for VOC-style names: 2008_000123 -> 2008000123.

    The same image gets the same id in VOC and SBD, so overlaps can be found by id. Names of
    another form are numbered 1.. in the given order.
    """
    matches = [_VOC_NAME.match(n) for n in names]
    if all(matches):
        return [int(m.group(1)) * 1_000_000 + int(m.group(2)) for m in matches]
    return list(range(1, len(names) + 1))


def map_images(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    total: int,
    workers: int,
    desc: str,
    unit: str = "img",
    quiet: bool = False,
) -> list[Any]:
    """`[fn(x) for x in items]` over `workers` processes, in order, with a progress bar (none
    when `quiet`)."""
    if workers < 1:
        raise IfcnError(f"--workers must be at least 1, got {workers}")
    out: list[Any] = []
    with progress_bar(total=total, desc=desc, unit=unit, leave=False, disable=quiet) as bar:
        if workers <= 1:
            for x in items:
                out.append(fn(x))
                bar.update()
            return out
        with Pool(workers, worker_process) as pool:
            chunk = max(1, min(64, total // (4 * workers)))
            for result in pool.imap(fn, items, chunksize=chunk):
                out.append(result)
                bar.update()
    return out
