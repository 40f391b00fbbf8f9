"""COCO instances JSON: the one data contract every converter writes (DESIGN §3).

Masks are stored as compressed RLE (pycocotools) with `area` = mask area and `bbox` = the tight
box of the mask, so that everything downstream measures the same pixels. Writers go through a
temporary file and `os.replace`, so a crash never leaves a JSON that looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ifcn.atomic import atomic_path
from ifcn.errors import IfcnError

# COCO's object-size limits (pixels of mask area), as in COCOeval's areaRng.
SMALL_AREA = 32**2
LARGE_AREA = 96**2


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed RLE of a binary H×W mask, `counts` as str so that it serialises to JSON."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def rle_area_bbox(rle: dict) -> tuple[int, list[float]]:
    """Mask area and tight [x, y, w, h] box of a compressed RLE (str or bytes counts)."""
    rle = _bytes_rle(rle)
    area = int(mask_utils.area(rle))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return area, bbox


def decode_rle(rle: dict) -> np.ndarray:
    """Binary H×W uint8 mask of a compressed RLE."""
    return mask_utils.decode(_bytes_rle(rle))


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Compressed RLE (str counts) of a COCO segmentation: polygons, uncompressed or compressed RLE.

    Polygons are rasterised at the image's size; an RLE must already have that size.
    Raises ValueError with a short reason for anything else.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if len(polygons) != len(segmentation) or not polygons:
            raise ValueError("segmentation is neither a polygon list nor an RLE")
        if any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise ValueError("polygon with fewer than 3 points or an odd number of coordinates")
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = _bytes_rle(segmentation)
        else:
            raise ValueError("RLE counts are neither a list nor a string")
    else:
        raise ValueError("segmentation is neither a polygon list nor an RLE")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode()
    return {"size": [height, width], "counts": counts}


def polygons_outside(segmentation: Any, height: int, width: int) -> bool:
    """True if a polygon segmentation has a vertex outside the image (it would be clipped)."""
    if not isinstance(segmentation, list):
        return False
    for poly in segmentation:
        xs, ys = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
        if xs.size and (xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height):
            return True
    return False


def size_class(area: float) -> str:
    """'small', 'medium' or 'large' by COCO's area limits."""
    if area < SMALL_AREA:
        return "small"
    return "medium" if area < LARGE_AREA else "large"


def instances_from_label_map(labels: np.ndarray, categories: dict[int, int]) -> list[dict]:
    """One annotation body per instance index of a label map (0 = background).

    `categories` maps each instance index to its category id; indices absent from it are skipped.
    Returns dicts with category_id, segmentation, area, bbox and iscrowd=0, in index order.
    """
    out = []
    for index in sorted(categories):
        mask = labels == index
        if not mask.any():
            continue
        rle = encode_mask(mask)
        area, bbox = rle_area_bbox(rle)
        out.append(
            {
                "category_id": int(categories[index]),
                "segmentation": rle,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
    return out


def assemble_dataset(
    images: list[dict], annotations: list[list[dict]], categories: list[dict], info: dict
) -> dict:
    """COCO dataset from per-image records and their annotation bodies.

    `images[i]` must carry its `id`; annotation ids are numbered 1.. in image order, then in the
    order of each image's list, so a conversion is deterministic.
    """
    anns = []
    for image, bodies in zip(images, annotations, strict=True):
        for body in bodies:
            anns.append({"id": len(anns) + 1, "image_id": image["id"], **body})
    return {"info": info, "images": images, "annotations": anns, "categories": categories}


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file is an IfcnError naming it."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except json.JSONDecodeError as exc:
        raise IfcnError(f"not valid JSON ({exc})", path) from None


def require_coco_shape(data: Any, path: str | Path) -> None:
    """Raise unless `data` has COCO's images/annotations/categories lists."""
    if not isinstance(data, dict):
        raise IfcnError("not a COCO instances JSON (top level is not an object)", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise IfcnError(f"not a COCO instances JSON (no '{key}' list)", path)


def check_image_entries(images: list, path: str | Path) -> dict[int, dict]:
    """The JSON's image entries by id; IfcnError naming the file if one is malformed or repeated."""
    by_id: dict[int, dict] = {}
    for i, img in enumerate(images):
        try:
            image_id, height, width = img["id"], int(img["height"]), int(img["width"])
            if type(image_id) is not int or not isinstance(img["file_name"], str):
                raise ValueError
            if height < 1 or width < 1:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise IfcnError(
                f"images[{i}] needs an integer id, a file_name and a positive height and width",
                path,
            ) from None
        if image_id in by_id:
            raise IfcnError(f"image id {image_id} appears twice", path)
        by_id[image_id] = img
    return by_id


def read_image_table(json_path: str | Path) -> dict[int, dict]:
    """Image entries of a COCO JSON by id (file_name, height, width), checked."""
    data = load_json(json_path)
    require_coco_shape(data, json_path)
    return {
        image_id: {"file_name": img["file_name"], "height": int(img["height"]),
                   "width": int(img["width"])}
        for image_id, img in check_image_entries(data["images"], json_path).items()
    }  # fmt: skip


def write_json_atomic(data: Any, path: str | Path) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))


def _bytes_rle(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode()
    return {"size": [int(v) for v in rle["size"]], "counts": counts}
