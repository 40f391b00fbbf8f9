"""COCO instances JSON in, COCO instances JSON out: official files and labelling-tool exports.

Official COCO passes through (crowd annotations kept with iscrowd=1, `first_n` keeps the first N
sorted image ids, the paper's val2014 protocol). Exports from labelling tools (Roboflow, CVAT,
labelme) bend COCO's conventions, so every file is normalised the same way: masks become
compressed RLE, `area` and `bbox` are recomputed from the masks, boolean iscrowd becomes 0/1,
unused categories are dropped, file names are made plain relative paths. Each change is counted
in the notes. What cannot be repaired is refused by `validate_instances` before anything else
(duplicate ids, dangling references, absolute file names, odd polygons, corrupt RLE, ...).
"""

from __future__ import annotations

import os
from collections import defaultdict
from numbers import Real
from pathlib import Path
from typing import Any

from ifcn.data.formats import Converted, map_images
from ifcn.data.instances import read_instances
from ifcn.data.masks import polygons_outside, segmentation_to_rle, size_class
from ifcn.data.rle import rle_area_bbox
from ifcn.errors import IfcnError

ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")


def convert_coco(
    json_path: Path, image_root: Path, first_n: int | None = None, workers: int = 1
) -> Converted:
    """Normalise a COCO instances JSON whose file names are relative to `image_root`."""
    json_path, image_root = Path(json_path), Path(image_root)
    instances = read_instances(json_path)
    data = instances.data
    notes: list[str] = []
    categories = _categories(instances.categories, json_path)
    images = _images(instances.images, notes)
    by_id = {im["id"]: im for im in images}
    anns = _annotations(instances.annotations, notes)

    used = {a["category_id"] for a in anns}
    unused = [c for c in categories.values() if c["id"] not in used]
    if unused:
        names = ", ".join(f"{c['id']} '{c['name']}'" for c in unused)
        notes.append(f"dropped {len(unused)} categories that no annotation uses: {names}")
    kept_categories = [c for c in categories.values() if c["id"] in used]

    if first_n is not None:
        images = sorted(images, key=lambda im: im["id"])[:first_n]
        keep = {im["id"] for im in images}
        anns = [a for a in anns if a["image_id"] in keep]
        notes.append(f"kept the first {len(images)} of {len(by_id)} images by sorted id")
    _require_files(images, image_root, json_path)
    anns = _encode_masks(images, anns, workers, notes)

    info = dict(data["info"]) if isinstance(data.get("info"), dict) else {}
    info["source_format"] = "coco"
    dataset = {
        "info": info,
        "images": images,
        "annotations": anns,
        "categories": kept_categories,
    }
    return Converted(dataset, image_root, notes)


def _categories(records: dict[int, dict], path: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for i, c in records.items():
        if not isinstance(c.get("name"), str):
            raise IfcnError(f"category {i} needs a string 'name'", path)
        out[i] = {k: c[k] for k in ("id", "name", "supercategory") if k in c}
    return out


def _images(records: dict[int, dict], notes: list[str]) -> list[dict]:
    out = []
    renamed = dashed = 0
    for im in records.values():
        name = plain_file_name(im["file_name"])
        renamed += name != im["file_name"]
        dashed += name.startswith("-")
        out.append({**im, "file_name": name})
    if renamed:
        notes.append(f"{renamed} file names made plain relative paths ('\\' -> '/', './' dropped)")
    if dashed:
        notes.append(
            f"{dashed} file names begin with '-': kept, always read joined to the image root"
        )
    return out


def plain_file_name(name: str) -> str:
    """A file name as a plain relative POSIX path: '/' separators, no leading './'."""
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _annotations(records: list[dict], notes: list[str]) -> list[dict]:
    out = []
    booleans = missing_crowd = 0
    for a in records:
        crowd = a.get("iscrowd", 0)
        if "iscrowd" not in a:
            missing_crowd += 1
        elif isinstance(crowd, bool):
            booleans += 1
        out.append({**{k: a[k] for k in ANNOTATION_KEYS if k in a}, "iscrowd": int(crowd)})
    if booleans:
        notes.append(f"{booleans} boolean iscrowd values written as 0/1")
    if missing_crowd:
        notes.append(f"{missing_crowd} annotations without iscrowd set to iscrowd=0")
    return out


def _require_files(images: list[dict], root: Path, path: Path) -> None:
    missing = [im["file_name"] for im in images if not os.path.isfile(root / im["file_name"])]
    if missing:
        raise IfcnError(
            f"{len(missing)} of {len(images)} image files are missing under {root} "
            f"(e.g. '{missing[0]}')",
            path,
        )


def _encode_image(item: tuple[int, int, list]) -> list[tuple]:
    """Per (validated) segmentation of one image: (rle, area, bbox, clipped, dropped polygon
    parts). Polygon parts of fewer than 3 points (COCO has a few) are dropped; with none left
    the mask is empty."""
    height, width, segmentations = item
    out = []
    for seg in segmentations:
        dropped = sum(len(p) < 6 for p in seg) if isinstance(seg, list) else 0
        rle = segmentation_to_rle(seg, height, width)
        area, bbox = rle_area_bbox(rle)
        out.append((rle, area, bbox, polygons_outside(seg, height, width), dropped))
    return out


def _encode_masks(
    images: list[dict], anns: list[dict], workers: int, notes: list[str]
) -> list[dict]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for a in anns:
        by_image[a["image_id"]].append(a)
    groups = [by_image[im["id"]] for im in images]
    items = (
        (im["height"], im["width"], [a["segmentation"] for a in g])
        for im, g in zip(images, groups, strict=True)
    )
    results = map_images(_encode_image, items, len(images), workers, "masks")

    out = []
    polygons = area_changed = bbox_changed = size_changed = empty = clipped = parts = 0
    for group, encoded in zip(groups, results, strict=True):
        for a, res in zip(group, encoded, strict=True):
            rle, area, bbox, outside, dropped = res
            parts += dropped
            if area == 0:
                empty += 1
                continue
            polygons += isinstance(a["segmentation"], list)
            clipped += outside
            stored = a.get("area")
            if not _close(stored, area, max(1.0, 0.01 * area)):
                area_changed += 1
                if isinstance(stored, Real) and size_class(stored) != size_class(area):
                    size_changed += 1
            old_box = a.get("bbox")
            if not (
                isinstance(old_box, list)
                and len(old_box) == 4
                and all(_close(o, n, 1.0) for o, n in zip(old_box, bbox, strict=True))
            ):
                bbox_changed += 1
            out.append({**a, "segmentation": rle, "area": area, "bbox": bbox})
    counts = [
        (polygons, "polygon segmentations encoded as RLE"),
        (area_changed, "areas recomputed from the mask (stored value off by more than 1%)"),
        (size_changed, "annotations changed COCO size class (small/medium/large) with it"),
        (bbox_changed, "bboxes recomputed as the mask's tight box (off by more than 1 px)"),
        (clipped, "polygons reached outside their image and were clipped to it"),
        (parts, "polygon parts with fewer than 3 points dropped"),
        (empty, "annotations with an empty mask dropped"),
    ]
    notes.extend(f"{n} {what}" for n, what in counts if n)
    return out


def _close(value: Any, target: float, tol: float) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and abs(value - target) <= tol
