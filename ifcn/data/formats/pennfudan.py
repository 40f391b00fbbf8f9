"""Penn-Fudan pedestrians: PNGImages/<name>.png with PedMasks/<name>_mask.png.

Mask pixel value i is pedestrian i (0 background); one category, `person` (id 1). The dataset
has no official split: images are sorted by file name, the first VAL_SIZE are `val` and the rest
`train` (`all` = every image). Image ids are positions in that sorted list, 1-based, so an image
keeps its id whichever split it lands in.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ifcn.data.formats import Converted, apply_exclude, image_size, map_images, read_index_png
from ifcn.data.instances import assemble_dataset
from ifcn.data.masks import instances_from_label_map
from ifcn.errors import IfcnError

VAL_SIZE = 50
SPLITS = ("train", "val", "all")
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"}]


def split_names(root: Path, split: str) -> list[tuple[int, str]]:
    """(image id, name) of a split, by sorted file name of PNGImages/*.png."""
    if split not in SPLITS:
        raise IfcnError(f"unknown Penn-Fudan split '{split}' (choose from {', '.join(SPLITS)})")
    folder = Path(root) / "PNGImages"
    if not folder.is_dir():
        raise IfcnError("folder not found (expected PennFudanPed/PNGImages)", folder)
    names = sorted(p.stem for p in folder.glob("*.png"))
    numbered = list(enumerate(names, start=1))
    if split == "val":
        return numbered[:VAL_SIZE]
    if split == "train":
        return numbered[VAL_SIZE:]
    return numbered


def convert_pennfudan(
    root: Path, split: str, exclude: Path | None = None, workers: int = 1
) -> Converted:
    """Convert one split of a PennFudanPed folder."""
    root = Path(root)
    notes: list[str] = []
    numbered = split_names(root, split)
    kept = set(apply_exclude([n for _, n in numbered], exclude, notes))
    numbered = [(i, n) for i, n in numbered if n in kept]
    results = map_images(
        functools.partial(_convert_image, root),
        [n for _, n in numbered],
        len(numbered),
        workers,
        f"pennfudan {split}",
    )
    images = [{"id": i, **r["image"]} for (i, _), r in zip(numbered, results, strict=True)]
    dataset = assemble_dataset(
        images,
        [r["annotations"] for r in results],
        CATEGORIES,
        {"description": f"Penn-Fudan pedestrians {split}", "source_format": "pennfudan"},
    )
    return Converted(dataset, root / "PNGImages", notes)


def _convert_image(root: Path, name: str) -> dict:
    image_path = root / "PNGImages" / f"{name}.png"
    width, height = image_size(image_path)
    labels = read_index_png(root / "PedMasks" / f"{name}_mask.png", image_path, (width, height))
    categories = {int(i): 1 for i in np.unique(labels) if i != 0}
    image = {"file_name": image_path.name, "height": height, "width": width}
    return {"image": image, "annotations": instances_from_label_map(labels, categories)}
