"""Ground truth for evaluation: the COCO instances JSON read once, its masks converted per image.

GTs are kept in COCOeval's order (by image, then category rank, then file order), because
COCOeval's matching breaks ties in IoU by that order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from ifcn.errors import IfcnError


@dataclass
class GroundTruth:
    """What evaluation needs of a COCO instances JSON: sizes and non-crowd GTs per image."""

    path: Path
    sizes: dict[int, tuple[int, int]]  # image id -> (height, width)
    # image id -> [(segmentation, area or None, annotation id)], in COCOeval's order
    objects: dict[int, list[tuple[Any, float | None, int]]]
    crowd: dict[int, int]  # image id -> number of crowd GTs
    category_rank: dict[int, int]  # category id -> position among the sorted category ids


def read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise IfcnError("no such file", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IfcnError(f"not valid JSON ({exc})", path) from None


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Parse and check a COCO instances JSON; the masks are converted later, per image."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise IfcnError("not a COCO instances JSON (top level is not an object)", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise IfcnError(f"not a COCO instances JSON: no '{key}' list", path)
    sizes = {}
    for k, image in enumerate(data["images"]):
        try:
            sizes[int(image["id"])] = (int(image["height"]), int(image["width"]))
        except (KeyError, TypeError, ValueError):
            raise IfcnError(f"images[{k}] lacks an integer id, height or width", path) from None
    try:
        category_rank = {
            c: r for r, c in enumerate(sorted(int(c["id"]) for c in data["categories"]))
        }
    except (KeyError, TypeError, ValueError):
        raise IfcnError("a category lacks an integer id", path) from None
    rows: list[tuple[int, int, int, Any, float | None, int]] = []
    crowd = dict.fromkeys(sizes, 0)
    for k, ann in enumerate(data["annotations"]):
        try:
            image_id, ann_id = int(ann["image_id"]), int(ann["id"])
            category, segmentation = int(ann["category_id"]), ann["segmentation"]
        except (KeyError, TypeError, ValueError):
            raise IfcnError(
                f"annotations[{k}] lacks id, image_id, category_id or segmentation", path
            ) from None
        if image_id not in sizes:
            raise IfcnError(f"annotation {ann_id} refers to unknown image {image_id}", path)
        if category not in category_rank:
            raise IfcnError(f"annotation {ann_id} has unknown category_id {category}", path)
        if ann.get("iscrowd"):
            crowd[image_id] += 1
            continue
        area = ann.get("area")
        rows.append((image_id, category_rank[category], k, segmentation, area, ann_id))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    objects: dict[int, list] = {i: [] for i in sizes}
    for image_id, _, _, segmentation, area, ann_id in rows:
        objects[image_id].append((segmentation, None if area is None else float(area), ann_id))
    return GroundTruth(path, sizes, objects, crowd, category_rank)


def gt_rle(segmentation: Any, height: int, width: int, ann_id: int, path: Path) -> dict:
    """COCO.annToRLE: polygons merged into one RLE, uncompressed RLE compressed, RLE as is."""
    try:
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise IfcnError(
                f"annotation {ann_id}: RLE size {size} differs from its image's "
                f"[{height}, {width}]",
                path,
            )
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return segmentation
    except IfcnError:
        raise
    except Exception as exc:
        raise IfcnError(f"annotation {ann_id}: unreadable segmentation ({exc})", path) from None
