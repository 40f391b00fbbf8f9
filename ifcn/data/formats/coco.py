"""COCO instances JSON in, COCO instances JSON out: official files and labelling-tool exports.

Official COCO passes through (crowd annotations kept with iscrowd=1, `first_n` keeps the first N
sorted image ids, the paper's val2014 protocol). Exports from labelling tools (Roboflow, CVAT,
labelme) bend COCO's conventions, so every file is normalised: masks become compressed RLE,
boolean iscrowd becomes 0/1, unused categories are dropped, file names are made plain relative
paths. `area` and `bbox` are recomputed from the masks for exports ("mask"); an official
dataset keeps them as published ("published": COCOeval reads them so, and its AR by object
size with them), the default for a JSON found in COCO's own layout
(`ROOT/annotations/instances_SPLIT.json`). Each change is counted in the notes, and so are the
published fields that differ from their masks. What cannot be repaired is refused by
`validate_instances` before anything else (duplicate ids, dangling references, absolute file
names, odd polygons, corrupt RLE, ...). The masks are rasterised in pycocotools' batches over
`workers` processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ifcn.data.formats import Converted
from ifcn.data.instances import PLAIN_NAMES, read_instances
from ifcn.data.jsonio import gc_paused
from ifcn.data.masks import (
    LARGE_AREA,
    SMALL_AREA,
    MaskTable,
    encode_segmentations,
    stale_fields,
    stored_fields,
)
from ifcn.errors import IfcnError

ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
AREA_BBOX = ("published", "mask")


@gc_paused()
def convert_coco(
    json_path: Path,
    image_root: Path,
    first_n: int | None = None,
    workers: int = 1,
    area_bbox: str = "mask",
) -> Converted:
    """Normalise a COCO instances JSON whose file names are relative to `image_root`;
    `area_bbox` "published" keeps the stored area and bbox (see the module's docstring)."""
    if area_bbox not in AREA_BBOX:
        raise IfcnError(f"area_bbox must be one of {', '.join(AREA_BBOX)}, not {area_bbox!r}")
    json_path, image_root = Path(json_path), Path(image_root)
    instances = read_instances(json_path)
    data = instances.data
    notes: list[str] = []
    categories = _categories(instances.categories, json_path)
    images = list(instances.images.values())
    renamed = instances.findings.quirks[PLAIN_NAMES]
    if renamed:
        notes.append(f"{renamed} file names made plain relative paths ('\\' -> '/', './' dropped)")
    dashed = sum(im["file_name"].startswith("-") for im in images)
    if dashed:
        notes.append(
            f"{dashed} file names begin with '-': kept, always read joined to the image root"
        )
    anns = _annotations(instances.annotations, notes)

    used = {a["category_id"] for a in anns}
    unused = [c for c in categories.values() if c["id"] not in used]
    if unused:
        names = ", ".join(f"{c['id']} '{c['name']}'" for c in unused)
        notes.append(f"dropped {len(unused)} categories that no annotation uses: {names}")
    kept_categories = [c for c in categories.values() if c["id"] in used]

    if first_n is not None:
        total = len(images)
        images = sorted(images, key=lambda im: im["id"])[:first_n]
        keep = {im["id"] for im in images}
        anns = [a for a in anns if a["image_id"] in keep]
        notes.append(f"kept the first {len(images)} of {total} images by sorted id")
    _require_files(images, image_root, json_path)
    sizes = {im["id"]: (im["height"], im["width"]) for im in images}
    sizes = np.array([sizes[a["image_id"]] for a in anns], np.int64).reshape(-1, 2)
    masks = encode_segmentations(
        [a["segmentation"] for a in anns], sizes, instances.polygons, [a["id"] for a in anns],
        workers,
    )  # fmt: skip
    anns, masks = _with_masks(anns, sizes, masks, area_bbox, notes)

    info = dict(data["info"]) if isinstance(data.get("info"), dict) else {}
    info["source_format"] = "coco"
    info["area_bbox"] = area_bbox
    dataset = {
        "info": info,
        "images": images,
        "annotations": anns,
        "categories": kept_categories,
    }
    return Converted(dataset, image_root, notes, masks)


def _categories(records: dict[int, dict], path: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for i, c in records.items():
        if not isinstance(c.get("name"), str):
            raise IfcnError(f"category {i} needs a string 'name'", path)
        out[i] = {k: c[k] for k in ("id", "name", "supercategory") if k in c}
    return out


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


def _with_masks(
    anns: list[dict], sizes: np.ndarray, masks: MaskTable, area_bbox: str, notes: list[str]
) -> tuple[list[dict], MaskTable]:
    """The annotations with their masks as compressed RLE, `area` and `bbox` from the mask or
    as published (`area_bbox`), those with an empty mask dropped; the masks of those kept."""
    kept = np.flatnonzero(masks.area > 0)
    area_off, bbox_off = (flags[kept] for flags in stale_fields(anns, masks))
    stored_area, stored_box = (values[kept] for values in stored_fields(anns))
    mask_class = np.digitize(masks.area[kept], [SMALL_AREA, LARGE_AREA])
    moved = area_off & ~np.isnan(stored_area)
    size_changed = int(
        (moved & (np.digitize(stored_area, [SMALL_AREA, LARGE_AREA]) != mask_class)).sum()
    )
    area_changed, bbox_changed = int(area_off.sum()), int(bbox_off.sum())
    missing = np.isnan(stored_area) | np.isnan(stored_box).any(1)
    filled = int(missing.sum()) if area_bbox == "published" else 0
    take_area = area_bbox == "mask" or None
    texts, areas, boxes = masks.counts, masks.area.tolist(), masks.bbox.tolist()
    polygons = 0
    out = []
    for k in kept.tolist():
        a = anns[k]
        polygons += isinstance(a["segmentation"], list)
        height, width = sizes[k].tolist()
        body = {**a, "segmentation": {"size": [height, width], "counts": texts[k].decode()}}
        if take_area or "area" not in a:
            body["area"] = areas[k]
        if take_area or "bbox" not in a:
            body["bbox"] = boxes[k]
        out.append(body)
    empty = len(anns) - len(kept)
    parts = int(masks.dropped_parts.sum())
    clipped = int(masks.clipped[kept].sum())
    if area_bbox == "mask":
        counts = [
            (area_changed, "areas recomputed from the mask (stored value off by more than 1%)"),
            (size_changed, "annotations changed COCO size class (small/medium/large) with it"),
            (bbox_changed, "bboxes recomputed as the mask's tight box (off by more than 1 px)"),
        ]
    else:
        counts = [
            (area_changed, "published areas differ from the mask area by more than 1% (kept)"),
            (size_changed, "of them in another COCO size class than the mask's (kept)"),
            (bbox_changed, "published bboxes differ from the mask's tight box by more than "
                           "1 px (kept)"),
            (filled, "annotations without a published area or bbox given the mask's"),
        ]  # fmt: skip
    counts = [
        (polygons, "polygon segmentations encoded as RLE"),
        *counts,
        (clipped, "polygons reached outside their image and were clipped to it"),
        (parts, "polygon parts with fewer than 3 points dropped"),
        (empty, "annotations with an empty mask dropped"),
    ]
    notes.extend(f"{n} {what}" for n, what in counts if n)
    return out, MaskTable(
        counts=[texts[k] for k in kept.tolist()],
        area=masks.area[kept],
        bbox=masks.bbox[kept],
        clipped=masks.clipped[kept],
        dropped_parts=masks.dropped_parts[kept],
    )
