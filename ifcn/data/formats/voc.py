"""PASCAL VOC 2012 segmentation: SegmentationObject + SegmentationClass palette PNGs.

In SegmentationObject the palette index is the instance number (0 background); the same pixels in
SegmentationClass give its class (1-20). Index 255 is VOC's void band around every object: it
belongs to no mask, and is recorded as the image's `ignore` RLE (an extra key of the image
record) so that evaluation can leave those pixels out, as VOC's own protocol does.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ifcn.data.formats import (
    VOC_CLASSES,
    VOID,
    Converted,
    apply_exclude,
    image_size,
    map_images,
    name_image_ids,
    read_index_png,
    read_name_list,
    voc_categories,
)
from ifcn.data.instances import assemble_dataset
from ifcn.data.masks import instances_from_label_map
from ifcn.data.rle import encode_mask
from ifcn.errors import IfcnError


def convert_voc(root: Path, split: str, exclude: Path | None = None, workers: int = 1) -> Converted:
    """Convert the images of ImageSets/Segmentation/<split>.txt under a VOC2012 folder."""
    root = Path(root)
    notes: list[str] = []
    names = read_name_list(root / "ImageSets" / "Segmentation" / f"{split}.txt")
    names = apply_exclude(names, exclude, notes)
    results = map_images(
        functools.partial(_convert_image, root), names, len(names), workers, f"voc {split}"
    )
    ids = name_image_ids(names)
    images = [{"id": i, **r["image"]} for i, r in zip(ids, results, strict=True)]
    mixed = sum(r["mixed"] for r in results)
    if mixed:
        notes.append(f"{mixed} instances cover more than one class; each took its majority class")
    with_void = sum("ignore" in im for im in images)
    notes.append(f"{with_void} images have void (255) pixels, recorded as the image's 'ignore' RLE")
    dataset = assemble_dataset(
        images,
        [r["annotations"] for r in results],
        voc_categories(),
        {"description": f"PASCAL VOC 2012 segmentation {split}", "source_format": "voc"},
    )
    return Converted(dataset, root / "JPEGImages", notes)


def _convert_image(root: Path, name: str) -> dict:
    image_path = root / "JPEGImages" / f"{name}.jpg"
    width, height = image_size(image_path)
    obj_path = root / "SegmentationObject" / f"{name}.png"
    cls_path = root / "SegmentationClass" / f"{name}.png"
    objects = read_index_png(obj_path, image_path, (width, height))
    classes = read_index_png(cls_path, image_path, (width, height))
    categories, mixed = instance_classes(objects, classes, cls_path)
    image = {"file_name": image_path.name, "height": height, "width": width}
    void = objects == VOID
    if void.any():
        image["ignore"] = encode_mask(void)
    return {
        "image": image,
        "annotations": instances_from_label_map(objects, categories),
        "mixed": mixed,
    }


def instance_classes(
    objects: np.ndarray, classes: np.ndarray, cls_path: Path
) -> tuple[dict[int, int], int]:
    """Class of each instance index: the majority non-void class under its pixels.

    Returns the mapping and how many instances covered more than one class.
    """
    categories: dict[int, int] = {}
    mixed = 0
    for index in np.unique(objects):
        if index in (0, VOID):
            continue
        counts = np.bincount(classes[objects == index].ravel(), minlength=256)
        counts[0] = counts[VOID] = 0
        if not counts.any():
            raise IfcnError(f"instance {index} has no class under its pixels", cls_path)
        present = np.flatnonzero(counts)
        if present.max() > len(VOC_CLASSES):
            raise IfcnError(f"class index {present.max()} is not a VOC class (1-20)", cls_path)
        mixed += len(present) > 1
        categories[int(index)] = int(counts.argmax())
    return categories, mixed
