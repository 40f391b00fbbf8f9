"""Object masks as the data contract holds them: segmentations (polygons, uncompressed or
compressed RLE) turned into compressed RLE, instance label maps into annotation bodies with
`area` = mask area and `bbox` = the tight box of the mask (so that everything downstream
measures the same pixels), tight boxes of decoded masks, and COCO's object-size classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ifcn.data.formats import map_images
from ifcn.data.rle import bytes_rle, encode_mask, rle_area_bbox

# Annotations per job of `encode_segmentations`: a job's vertices stay in the cache-sized
# megabytes, and a COCO-sized file makes a hundred jobs to share among the workers.
ENCODE_CHUNK = 8192
# pycocotools 2.0.11 with NumPy 2 fails to measure 256 or more RLEs at once (a uint8 length).
PYCOCOTOOLS_BATCH = 255

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


@dataclass
class PolygonTable:
    """The polygon vertices of many annotations, flat (as the validator reads them): annotation
    `keys[k]` has parts `first_part[k]` .. `first_part[k] + parts[k] - 1`, part j the
    coordinates `xy[part_start[j] : part_start[j] + part_length[j]]` (x, y, x, y, ...);
    `clipped[k]` says whether a vertex lies outside its image."""

    keys: np.ndarray
    first_part: np.ndarray
    parts: np.ndarray
    part_start: np.ndarray
    part_length: np.ndarray
    xy: np.ndarray
    clipped: np.ndarray

    @classmethod
    def empty(cls) -> PolygonTable:
        none = np.zeros(0, np.int64)
        return cls(none, none, none, none, none, np.zeros(0), np.zeros(0, bool))

    @classmethod
    def of(cls, keys: Sequence[int], segmentations: Sequence[list], sizes: np.ndarray) -> Any:
        """The table of (validated) polygon segmentations of images of `sizes` ([n, 2] h, w)."""
        parts = [p for s in segmentations for p in s]
        lengths = np.fromiter(map(len, parts), np.int64, len(parts))
        count = np.fromiter(map(len, segmentations), np.int64, len(segmentations))
        xy = np.fromiter(chain.from_iterable(parts), np.float64, int(lengths.sum()))
        clipped = [
            polygons_outside(s, h, w)
            for s, (h, w) in zip(segmentations, sizes.tolist(), strict=True)
        ]
        return cls(
            np.asarray(keys, np.int64), np.cumsum(count) - count, count,
            np.cumsum(lengths) - lengths, lengths, xy, np.array(clipped, bool),
        )  # fmt: skip


@dataclass
class MaskTable:
    """Many annotations' masks: compressed RLE text, area and tight [x, y, w, h] box (as
    pycocotools' `area` and `toBbox` give them), whether a polygon vertex lay outside the image
    (clipped), and how many polygon parts of fewer than 3 points were left out."""

    counts: list[bytes]
    area: np.ndarray
    bbox: np.ndarray
    clipped: np.ndarray
    dropped_parts: np.ndarray


def _gather(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """values[starts[0] : starts[0] + lengths[0]], then the next range, ..., joined."""
    offsets = np.cumsum(lengths) - lengths
    return values[np.arange(int(lengths.sum())) + np.repeat(starts - offsets, lengths)]


def encode_segmentations(
    segmentations: Sequence[Any],
    sizes: np.ndarray,
    polygons: PolygonTable,
    keys: Sequence[int],
    workers: int = 1,
) -> MaskTable:
    """`segmentation_to_rle` of many validated segmentations (images of `sizes`, [n, 2] h, w),
    with areas and boxes: pycocotools' C code called on batches, in jobs over `workers`
    processes. Polygon vertices come from `polygons`, found by `keys` (made here when it
    lacks any)."""
    n = len(segmentations)
    is_polygon = np.fromiter((isinstance(s, list) for s in segmentations), bool, n)
    where = np.flatnonzero(is_polygon)
    wanted = np.asarray(keys, np.int64)[where]
    order = np.argsort(polygons.keys, kind="stable")
    found = np.searchsorted(polygons.keys[order], wanted)
    found = np.minimum(found, max(len(order) - 1, 0))
    if len(wanted) and not (len(order) and (polygons.keys[order][found] == wanted).all()):
        polygons = PolygonTable.of(wanted, [segmentations[i] for i in where], sizes[where])
        order, found = np.arange(len(wanted)), np.arange(len(wanted))
    row = np.full(n, -1, np.int64)
    row[where] = order[found] if len(wanted) else []
    clipped = np.zeros(n, bool)
    clipped[where] = polygons.clipped[row[where]]
    jobs = []
    for start in range(0, n, ENCODE_CHUNK):
        rows = row[start : start + ENCODE_CHUNK]
        rows = rows[rows >= 0]
        parts = _gather(np.arange(len(polygons.part_length)), polygons.first_part[rows],
                        polygons.parts[rows])  # fmt: skip
        owner = np.repeat(np.arange(len(rows)), polygons.parts[rows])
        usable = polygons.part_length[parts] >= 6
        lengths = polygons.part_length[parts][usable]
        xy = _gather(polygons.xy, polygons.part_start[parts][usable], lengths)
        rles = [s for s in segmentations[start : start + ENCODE_CHUNK] if not isinstance(s, list)]
        jobs.append((
            sizes[start : start + ENCODE_CHUNK], is_polygon[start : start + ENCODE_CHUNK],
            np.bincount(owner[usable], minlength=len(rows)),
            np.bincount(owner[~usable], minlength=len(rows)), lengths, xy, rles,
        ))  # fmt: skip
    workers = min(workers, max(1, len(jobs)))
    done = map_images(
        _encode_job, jobs, len(jobs), workers, "masks", unit="job", quiet=len(jobs) <= 1
    )
    dropped = np.zeros(n, np.int64)
    dropped[where] = np.concatenate([d for *_, d in done]) if done else []
    return MaskTable(
        counts=list(chain.from_iterable(c for c, *_ in done)),
        area=np.concatenate([a for _, a, *_ in done]) if done else np.zeros(0, np.int64),
        bbox=np.concatenate([b for _, _, b, _ in done]) if done else np.zeros((0, 4)),
        clipped=clipped,
        dropped_parts=dropped,
    )


def _encode_job(job: tuple) -> tuple[list[bytes], np.ndarray, np.ndarray, np.ndarray]:
    """One job of `encode_segmentations`: texts, areas, boxes and dropped parts per polygon."""
    sizes, is_polygon, parts, dropped, lengths, xy, rles = job
    n = len(sizes)
    counts: list[bytes] = [b""] * n
    ends = np.cumsum(lengths)
    views = [xy[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist(), strict=True)]
    first = (np.cumsum(parts) - parts).tolist()
    polygon_index = np.flatnonzero(is_polygon)
    shapes, group = np.unique(sizes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g, (height, width) in enumerate(shapes.tolist()):
        mine = group[polygon_index] == g
        single = polygon_index[mine & (parts == 1)]
        if len(single):
            at = np.flatnonzero(mine & (parts == 1))
            made = mask_utils.frPyObjects([views[first[k]] for k in at.tolist()], height, width)
            for i, rle in zip(single.tolist(), made, strict=True):
                counts[i] = rle["counts"]
        for k in np.flatnonzero(mine & (parts > 1)).tolist():
            pieces = views[first[k] : first[k] + int(parts[k])]
            counts[polygon_index[k]] = mask_utils.merge(
                mask_utils.frPyObjects(pieces, height, width)
            )["counts"]
        if (mine & (parts == 0)).any():
            blank = encode_mask(np.zeros((height, width), np.uint8))["counts"].encode()
            for k in np.flatnonzero(mine & (parts == 0)).tolist():
                counts[polygon_index[k]] = blank
    for i, rle in zip(np.flatnonzero(~is_polygon).tolist(), rles, strict=True):
        counts[i] = segmentation_to_rle(rle, *sizes[i].tolist())["counts"].encode()
    area = np.zeros(n, np.int64)
    bbox = np.zeros((n, 4))
    for g, (height, width) in enumerate(shapes.tolist()):
        members = np.flatnonzero(group == g)
        for b in range(0, len(members), PYCOCOTOOLS_BATCH):
            batch = members[b : b + PYCOCOTOOLS_BATCH]
            rles_b = [{"size": [height, width], "counts": counts[i]} for i in batch.tolist()]
            area[batch] = mask_utils.area(rles_b)
            bbox[batch] = mask_utils.toBbox(rles_b)
    return counts, area, bbox, dropped


def stored_fields(anns: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The `area` ([n]) and `bbox` ([n, 4]) that annotations store, NaN where they have none."""
    nan = float("nan")
    area = np.array([a.get("area", nan) for a in anns], np.float64)
    boxes = [a.get("bbox") for a in anns]
    box = [b if isinstance(b, list) and len(b) == 4 else [nan] * 4 for b in boxes]
    return area, np.array(box, np.float64).reshape(-1, 4)


def stale_fields(anns: Sequence[dict], masks: MaskTable) -> tuple[np.ndarray, np.ndarray]:
    """Which stored areas are off the mask's by more than 1% (at least a pixel) and which
    stored boxes off its tight box by more than 1 px (a missing field is off)."""
    area, box = stored_fields(anns)
    mask_area = masks.area.astype(np.float64)
    area_ok = np.abs(area - mask_area) <= np.maximum(1.0, 0.01 * mask_area)
    return ~area_ok, ~(np.abs(box - masks.bbox) <= 1.0).all(1)
