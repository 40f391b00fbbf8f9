"""Object masks as the data contract holds them: segmentations (polygons, uncompressed or
compressed RLE) turned into compressed RLE, instance label maps into annotation bodies with
`area` = mask area and `bbox` = the tight box of the mask (so that everything downstream
measures the same pixels), tight boxes of decoded masks, and COCO's object-size classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ifcn.data.rle import bytes_rle, encode_mask, rle_area_bbox

# COCO's object-size limits (pixels of mask area), as in COCOeval's areaRng.
SMALL_AREA = 32**2
LARGE_AREA = 96**2


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Compressed RLE (str counts) of a validated segmentation: polygons, uncompressed or
    compressed RLE. Polygon parts of fewer than 3 points cover nothing and are left out; a
    polygon list without any other part gives an empty mask.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return encode_mask(np.zeros((height, width), np.uint8))
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = bytes_rle(segmentation)
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


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """[N, 4] float32 tight xyxy boxes of [N, H, W] masks; x1, y1 exclusive (last index + 1)."""
    if masks.shape[0] == 0:
        return np.zeros((0, 4), np.float32)
    cols, rows = masks.any(1), masks.any(2)
    x0, y0 = cols.argmax(1), rows.argmax(1)
    x1 = masks.shape[2] - cols[:, ::-1].argmax(1)
    y1 = masks.shape[1] - rows[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1, y1], 1).astype(np.float32)
