"""COCO instances JSON and COCO results JSON: the data contract (DESIGN §3) and its two doors.

Every stage that reads a COCO instances JSON (training, inference, evaluation, pictures, `data
check`, `data convert` in and out) goes through `read_instances`/`validate_instances`, and every
stage that reads a COCO results JSON through `read_results`, so a file is judged by the same
rules wherever it enters. Besides the shape (ids are integers, references resolve, nothing is
repeated) the rules are numeric: sizes positive and bounded, numbers finite, polygon vertices near
their image, and every RLE decoded and checked to cover exactly its image's pixels. pycocotools
trusts its input: a corrupt `counts` string decodes to areas larger than the image and overruns
the buffer `decode` fills, and a 1e12 polygon vertex makes its rasteriser allocate without bound.

Masks are written as compressed RLE (pycocotools) with `area` = mask area and `bbox` = the tight
box of the mask, so that everything downstream measures the same pixels. Writers go through a
temporary file and `os.replace`, so a crash never leaves a JSON that looks complete.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import hashlib
import itertools
import json
import math
import mmap
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import orjson
from pycocotools import mask as mask_utils

from ifcn.atomic import atomic_path
from ifcn.errors import IfcnError
from ifcn.signals import worker_process

# COCO's object-size limits (pixels of mask area), as in COCOeval's areaRng.
SMALL_AREA = 32**2
LARGE_AREA = 96**2
# pycocotools decodes a count of RLE text into a C int shifted by 5 bits per character: past
# 2**28 pixels (16384 x 16384) a run no longer fits the 6 characters it can shift safely.
MAX_PIXELS = 2**28
MAX_RLE_CHARS = 6
# A polygon vertex may lie outside its image (it is clipped) by at most one image side.
POLYGON_MARGIN = 1.0


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
        rle = _bytes_rle(segmentation)
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


def read_bytes(path: str | Path) -> bytearray:
    """A file's bytes (mutable, so that a reader may write into them); a missing or unreadable
    file is an IfcnError naming it."""
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(data) != len(data) or f.read(1):
                raise OSError("the file changed while it was read")
            return data
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector. Building a parsed JSON's millions of containers triggers
    it thousands of times, two thirds of the parse time, and they hold no cycle to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_json(raw: bytes | bytearray | mmap.mmap, path: str | Path) -> Any:
    """JSON text parsed by orjson, which refuses NaN and Infinity (Python's json reads them)."""
    try:
        with gc_paused():
            return orjson.loads(memoryview(raw) if isinstance(raw, mmap.mmap) else raw)
    except orjson.JSONDecodeError as exc:
        raise IfcnError(f"not valid JSON ({exc})", path) from None


def _map_file(path: Path) -> mmap.mmap | bytearray:
    """A file's bytes mapped privately (written pages are this process's copies): no read, no
    copy, and forked workers share the pages. An empty file is read instead."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return bytearray()
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=prot)
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is an IfcnError naming it."""
    return parse_json(read_bytes(path), path)


def require_coco_shape(data: Any, path: str | Path) -> None:
    """Raise unless `data` has COCO's images/annotations/categories lists."""
    if not isinstance(data, dict):
        raise IfcnError("not a COCO instances JSON (top level is not an object)", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise IfcnError(f"not a COCO instances JSON (no '{key}' list)", path)


def is_int(value: Any) -> bool:
    """An integer proper: not a bool, not a float that happens to be whole, not a string."""
    return type(value) is int


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinity)."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


@dataclass
class Findings:
    """What a validator found in one file: problems, and tolerated quirks counted by kind.

    With `collect` False (every stage but `data check`) the first problem raises an IfcnError
    naming the file; with `collect` True problems are listed and the bad records left out.
    """

    path: Path
    collect: bool = False
    problems: list[str] = field(default_factory=list)
    quirks: Counter = field(default_factory=Counter)

    def problem(self, message: str) -> None:
        if not self.collect:
            raise IfcnError(message, self.path)
        self.problems.append(message)


@dataclass
class Instances:
    """A validated COCO instances JSON: the records that passed, by id and in file order."""

    path: Path
    data: dict
    images: dict[int, dict]
    categories: dict[int, dict]
    annotations: list[dict]
    findings: Findings
    sha256: str = ""  # of the file's bytes, when read from a file

    def image_size(self, image_id: int) -> tuple[int, int]:
        image = self.images[image_id]
        return image["height"], image["width"]


def read_instances(path: str | Path, *, collect: bool = False) -> Instances:
    """Read and validate a COCO instances JSON (see `validate_instances`)."""
    path = Path(path)
    raw = read_bytes(path)
    with gc_paused():
        instances = validate_instances(parse_json(raw, path), path, collect=collect)
    instances.sha256 = hashlib.sha256(raw).hexdigest()
    return instances


def validate_instances(data: Any, path: str | Path, *, collect: bool = False) -> Instances:
    """Check every image, category and annotation of a COCO instances JSON.

    Problems (raised, or listed with `collect`): a record that is not an object; ids that are not
    integers or repeat; an annotation of an unknown image or category; an image size that is not
    a positive integer or exceeds MAX_PIXELS; a file name that is empty, absolute or climbs out of
    the image root with '..'; a missing segmentation; a polygon with an odd number of coordinates,
    a coordinate that is not a finite number or lies more than an image side outside its image;
    an RLE whose size is not its image's or whose runs do not cover exactly its pixels; an
    `area` or `bbox` that is not finite, negative or beyond the image; `iscrowd` other than 0/1.
    Quirks (tolerated, counted): boolean or missing `iscrowd`, polygon parts of fewer than 3
    points, polygon vertices outside the image, file names with '\\' separators or './'.
    """
    path = Path(path)
    require_coco_shape(data, path)
    findings = Findings(path, collect)
    categories = _validate_categories(data["categories"], findings)
    images = _validate_images(data["images"], findings)
    refused = {
        image["id"]
        for image in data["images"]
        if isinstance(image, dict) and is_int(image.get("id")) and image["id"] not in images
    }
    annotations = _validate_annotations(data["annotations"], images, refused, categories, findings)
    return Instances(path, data, images, categories, annotations, findings)


def _validate_categories(records: list, findings: Findings) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for i, category in enumerate(records):
        if not isinstance(category, dict) or not is_int(category.get("id")):
            findings.problem(f"categories[{i}] has no integer id")
        elif category["id"] in out:
            findings.problem(f"duplicate category id {category['id']}")
        elif "name" in category and not isinstance(category["name"], str):
            findings.problem(f"category {category['id']}: name is not a string")
        else:
            out[category["id"]] = category
    return out


def _validate_images(records: list, findings: Findings) -> dict[int, dict]:
    out: dict[int, dict] = {}
    rles: list[tuple[int, Any, int, int]] = []
    for i, image in enumerate(records):
        if not isinstance(image, dict) or not is_int(image.get("id")):
            findings.problem(f"images[{i}] has no integer id")
            continue
        where = f"image {image['id']}"
        if image["id"] in out:
            findings.problem(f"duplicate image id {image['id']}")
            continue
        height, width = image.get("height"), image.get("width")
        if not (is_int(height) and is_int(width) and height > 0 and width > 0):
            findings.problem(f"{where}: height and width must be positive integers")
            continue
        if height * width > MAX_PIXELS:
            findings.problem(f"{where}: {height}x{width} exceeds {MAX_PIXELS} pixels")
            continue
        reason = file_name_fault(image.get("file_name"))
        if reason:
            findings.problem(f"{where}: {reason}")
            continue
        if "\\" in image["file_name"] or image["file_name"].startswith("./"):
            findings.quirks["file names with '\\' separators or a leading './'"] += 1
        if "ignore" in image:
            reason = _rle_fault(image["ignore"], height, width)
            if reason:
                findings.problem(f"{where}: 'ignore' {reason}")
                continue
            rles.append((image["id"], image["ignore"], height, width))
        out[image["id"]] = image
    for image_id, reason in _string_faults(rles):
        findings.problem(f"image {image_id}: 'ignore' {reason}")
        del out[image_id]
    return out


def file_name_fault(name: Any) -> str | None:
    """Why `name` cannot be a file name relative to an image root, or None if it can."""
    if not isinstance(name, str) or not name.strip():
        return "file_name is missing or empty"
    if "\x00" in name:
        return "file_name holds a NUL character"
    plain = name.replace("\\", "/")
    if PurePosixPath(plain).is_absolute() or PureWindowsPath(name).anchor:
        return f"file_name {name!r} is absolute; it must be relative to the image root"
    if ".." in PurePosixPath(plain).parts:
        return f"file_name {name!r} contains '..'; it must stay inside the image root"
    return None


def _validate_annotations(
    records: list,
    images: dict[int, dict],
    refused: set[int],
    categories: dict[int, dict],
    findings: Findings,
) -> list[dict]:
    kept: dict[int, dict] = {}
    seen: set[int] = set()
    rles: list[tuple[int, Any, int, int]] = []
    for i, ann in enumerate(records):
        if not isinstance(ann, dict) or not is_int(ann.get("id")):
            findings.problem(f"annotations[{i}] has no integer id")
            continue
        aid = ann["id"]
        where = f"annotation {aid}"
        if aid in seen:
            findings.problem(f"duplicate annotation id {aid}")
            continue
        seen.add(aid)
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if not is_int(image_id):
            findings.problem(f"{where}: image_id {image_id!r} is not an integer")
            continue
        if image_id not in images:
            if image_id not in refused:  # a refused image's problem is listed already
                findings.problem(f"{where}: unknown image_id {image_id}")
            continue
        if not is_int(category_id):
            findings.problem(f"{where}: category_id {category_id!r} is not an integer")
            continue
        if category_id not in categories:
            findings.problem(f"{where}: unknown category_id {category_id}")
            continue
        height, width = images[image_id]["height"], images[image_id]["width"]
        reason = _annotation_fault(ann, height, width, findings)
        if reason:
            findings.problem(f"{where}: {reason}")
            continue
        if isinstance(ann["segmentation"], dict):
            rles.append((aid, ann["segmentation"], height, width))
        kept[aid] = ann
    for aid, reason in _string_faults(rles):
        findings.problem(f"annotation {aid}: {reason}")
        del kept[aid]
    return list(kept.values())


def _annotation_fault(ann: dict, height: int, width: int, findings: Findings) -> str | None:
    """Why an annotation (with valid ids) is unusable, or None; counts the quirks it has."""
    crowd = ann.get("iscrowd", 0)
    if "iscrowd" not in ann:
        findings.quirks["annotations without iscrowd (read as 0)"] += 1
    elif isinstance(crowd, bool):
        findings.quirks["iscrowd stored as a boolean"] += 1
    elif crowd not in (0, 1) or not is_int(crowd):
        return f"iscrowd {crowd!r} is not 0/1"
    segmentation = ann.get("segmentation")
    if not segmentation:
        return "no segmentation"
    if isinstance(segmentation, list):
        reason = _polygons_fault(segmentation, height, width, findings)
    else:
        reason = _rle_fault(segmentation, height, width)
    if reason:
        return reason
    if "area" in ann:
        area = ann["area"]
        if not is_number(area) or area < 0:
            return f"area {area!r} is not a finite non-negative number"
        if area > height * width:
            return f"area {area} exceeds the image's {height}x{width} pixels"
    if "bbox" in ann:
        return _bbox_fault(ann["bbox"], height, width)
    return None


def _polygons_fault(polygons: list, height: int, width: int, findings: Findings) -> str | None:
    lo_x, hi_x = -POLYGON_MARGIN * width, (1 + POLYGON_MARGIN) * width
    lo_y, hi_y = -POLYGON_MARGIN * height, (1 + POLYGON_MARGIN) * height
    outside = False
    for polygon in polygons:
        if not isinstance(polygon, list):
            return "segmentation is neither a polygon list nor an RLE"
        if len(polygon) % 2:
            return f"a polygon has an odd number of coordinates ({len(polygon)})"
        if len(polygon) < 6:
            findings.quirks["polygon parts with fewer than 3 points (left out)"] += 1
        if not all(type(v) in (int, float) for v in polygon):
            return "polygon coordinates must be numbers"
        xy = np.asarray(polygon, dtype=np.float64)
        if not np.isfinite(xy).all():
            return "a polygon coordinate is not finite"
        xs, ys = xy[0::2], xy[1::2]
        if len(xs) and (xs.min() < lo_x or xs.max() > hi_x or ys.min() < lo_y or ys.max() > hi_y):
            return (
                f"a polygon vertex lies far outside the {width}x{height} image "
                f"(x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g})"
            )
        outside |= bool(len(xs)) and (
            xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height
        )
    if outside:
        findings.quirks["polygons reaching outside their image (clipped)"] += 1
    return None


def _rle_fault(rle: Any, height: int, width: int) -> str | None:
    """Why an RLE cannot be a mask of a height×width image (compressed text is checked later)."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        return "segmentation is neither a polygon list nor an RLE"
    size = rle["size"]
    if not _is_size(size):
        return f"RLE size {size!r} is not [height, width]"
    if size != [height, width]:
        return f"RLE size {size} differs from its image's [{height}, {width}]"
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return None
    if not isinstance(counts, list) or not all(map(is_int, counts)):
        return "RLE counts are neither a string nor a list of integers"
    if counts and min(counts) < 0:
        return "RLE counts hold a negative run"
    if sum(counts) != height * width:
        return f"RLE runs cover {sum(counts)} pixels, the image has {height * width}"
    return None


def _string_faults(rles: list[tuple[int, Any, int, int]]) -> list[tuple[int, str]]:
    """(key, reason) of every compressed RLE text among (key, rle, h, w) that is not a mask."""
    texts = [
        (key, r["counts"], h * w) for key, r, h, w in rles if not isinstance(r["counts"], list)
    ]
    if not texts:
        return []
    faults = rle_text_faults([t for _, t, _ in texts], np.array([p for _, _, p in texts]))
    return [(key, reason) for (key, _, _), reason in zip(texts, faults, strict=True) if reason]


def _bbox_fault(bbox: Any, height: int, width: int) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))):
        return f"bbox {bbox!r} is not four finite numbers"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox {bbox} has a negative width or height"
    mx, my = POLYGON_MARGIN * width, POLYGON_MARGIN * height
    if x < -mx or y < -my or x + w > width + mx or y + h > height + my:
        return f"bbox {bbox} lies far outside the {width}x{height} image"
    return None


RLE_BATCH_CHARS = 1 << 15  # decoded at once: their arrays stay in cache and off fresh pages


def rle_text_faults(texts: list[str | bytes], pixels: np.ndarray) -> list[str | None]:
    """Why each compressed RLE text is not a mask of `pixels[i]` pixels, or None if it is.

    Decodes the texts vectorised, in batches of about RLE_BATCH_CHARS characters, exactly as
    pycocotools' rleFrString reads them (5 bits per character from '0', a continuation bit, a
    sign bit on the last character, runs after the third stored as differences to the run two
    before), and requires characters in '0'..'o', no number cut off or longer than
    MAX_RLE_CHARS, no negative run, and runs that add up to the image's pixel count.
    """
    raw = [t.encode() if isinstance(t, str) else bytes(t) for t in texts]
    pixels = np.asarray(pixels)
    ends = np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw))).tolist()
    faults: list[str | None] = []
    start = 0
    while start < len(raw):
        limit = (ends[start - 1] if start else 0) + RLE_BATCH_CHARS
        stop = max(start + 1, bisect.bisect_right(ends, limit, lo=start))
        faults += _rle_text_faults(raw[start:stop], pixels[start:stop])
        start = stop
    return faults


def _rle_text_faults(raw: list[bytes], pixels: np.ndarray) -> list[str | None]:
    """`rle_text_faults` of one batch of texts (as bytes)."""
    lengths = np.fromiter(map(len, raw), np.int64, len(raw))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    faults: list[str | None] = [None] * len(raw)
    codes = np.frombuffer(b"".join(raw), np.uint8) - np.uint8(48)  # wraps below '0'

    def fail(indices: np.ndarray, reason: str) -> None:
        for i in np.unique(indices).tolist():
            faults[i] = faults[i] or reason

    fail(np.flatnonzero(lengths == 0), "RLE counts are empty")
    outside = np.flatnonzero(codes > 63)
    fail(
        np.searchsorted(starts, outside, side="right") - 1,
        "RLE counts hold a character outside '0'..'o'",
    )
    nonempty = np.flatnonzero(lengths > 0)
    fail(nonempty[(codes[starts[nonempty + 1] - 1] & 0x20) != 0], "RLE counts end inside a number")
    good = np.array([f is None for f in faults], dtype=bool)
    if not good.any():
        return faults
    index = np.flatnonzero(good)
    if not good.all():
        codes = codes[np.repeat(good, lengths)]
        lengths = lengths[good]
        starts = np.concatenate([[0], np.cumsum(lengths)])

    last = (codes & 0x20) == 0  # the last character of a number
    ends = np.flatnonzero(last)
    begins = np.concatenate([[0], ends[:-1] + 1])
    chars = ends - begins + 1
    numbers = np.add.reduceat(last, starts[:-1], dtype=np.int64)  # per text
    owner = np.repeat(np.arange(len(lengths)), numbers)
    fail(
        index[owner[chars > MAX_RLE_CHARS]],
        f"RLE counts hold a number longer than {MAX_RLE_CHARS} characters",
    )
    values = (codes[begins] & 0x1F).astype(np.int64)
    more = np.flatnonzero(chars > 1)
    for k in range(1, MAX_RLE_CHARS):
        more = more[chars[more] > k]
        values[more] |= (codes[begins[more] + k] & 0x1F).astype(np.int64) << (5 * k)
    negative = np.flatnonzero(codes[ends] & 0x10)
    values[negative] |= np.left_shift(-1, 5 * np.minimum(chars[negative], MAX_RLE_CHARS))

    first = np.concatenate([[0], np.cumsum(numbers)[:-1]])  # first number of each text
    position = np.arange(len(values)) - np.repeat(first, numbers)
    runs = values.copy()
    for parity, start in ((1, 1), (0, 2)):  # run m (m > 2) adds run m - 2 of its own text
        chain = np.flatnonzero((position >= start) & ((position & 1) == parity))
        total = np.cumsum(values[chain])
        head = np.flatnonzero(position[chain] == start)
        base = total[head] - values[chain[head]]
        runs[chain] = total - np.repeat(base, np.diff(np.append(head, len(chain))))
    fail(index[owner[runs < 0]], "RLE counts hold a negative run")
    covered = np.add.reduceat(runs, first)
    for i in np.flatnonzero(covered != pixels[index]).tolist():
        j = index[i]
        faults[j] = faults[j] or f"RLE runs cover {covered[i]} pixels, the image has {pixels[j]}"
    return faults


def read_image_table(json_path: str | Path) -> dict[int, dict]:
    """Image entries of a validated COCO JSON by id (file_name, height, width)."""
    instances = read_instances(json_path)
    return {
        image_id: {"file_name": img["file_name"], "height": img["height"], "width": img["width"]}
        for image_id, img in instances.images.items()
    }


@dataclass
class Results:
    """A checked COCO results JSON as columns, in file order."""

    path: Path
    image_id: np.ndarray  # (R,) int64
    score: np.ndarray  # (R,) float64
    category_rank: np.ndarray  # (R,) int64: position among the sorted category ids; -1: none
    text: bytes | mmap.mmap  # the results' compressed RLE counts
    text_start: np.ndarray  # (R,) int64: result r's counts are text[start[r]:end[r]]
    text_end: np.ndarray  # (R,) int64
    raw: bytearray | mmap.mmap  # the file's bytes

    def counts(self, rows: np.ndarray) -> list[bytes]:
        """The RLE counts of the results `rows`."""
        text = self.text
        starts, ends = self.text_start[rows].tolist(), self.text_end[rows].tolist()
        return [text[a:b] for a, b in zip(starts, ends, strict=True)]

    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


_ABSENT = object()  # a result without category_id
# A results JSON this large is parsed in parts by worker processes (orjson holds the GIL).
PARALLEL_PARSE_BYTES = 1 << 24
_SEAM = re.compile(rb"\}\s*,\s*\{")  # between two objects of the top-level array, if anywhere


def read_results(
    path: str | Path,
    sizes: Mapping[int, tuple[int, int]],
    categories: Collection[int],
    workers: int = 1,
) -> Results:
    """Read and check a COCO results JSON of segmentations against the images it scores.

    Every result needs an integer `image_id`, a finite number `score` and a `segmentation` that is
    a compressed RLE (text counts of characters '0'..'o', the last one ending a number) whose size
    is its image's in `sizes`; `category_id`, if given, must be an integer of `categories`
    (COCOeval would drop others silently); it is kept as its rank among them, COCOeval's order
    of tied scores.
    Results of images `sizes` lacks pass (the caller decides). Checked column by column, so that
    half a million results take a fraction of a second; only when a check fails is the file
    walked result by result to name the first offender. With `workers` > 1 a large file is cut
    at seams between top-level objects and its parts parsed in parallel; a cut that is not
    between top-level objects leaves a part that is not JSON, and the file is then parsed whole.
    """
    path = Path(path)
    columns = None
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        raw = _map_file(path)
        if len(raw) >= PARALLEL_PARSE_BYTES:
            columns = _parse_in_parts(raw, sizes, categories, workers)
    else:
        raw = read_bytes(path)
    if columns is None:
        with gc_paused():
            data = parse_json(raw, path)
            if not isinstance(data, list):
                raise IfcnError("not a COCO results JSON (top level is not a list)", path)
            found = _columns(data, sizes, categories)
            if found is None:
                _first_fault(data, sizes, categories, path)
        *arrays, text, offset = found
        columns = (*arrays, text, offset[:-1], offset[1:])
    return Results(path, *columns, raw)


def _columns(
    data: list, sizes: Mapping[int, tuple[int, int]], categories: Collection[int]
) -> tuple | None:
    """(image ids, scores, category ids, counts text, text offsets) of results that pass every
    check of `read_results`, or None if one does not."""
    try:
        if set(map(type, data)) - {dict}:
            return None
        image_ids = [r["image_id"] for r in data]
        scores = [r["score"] for r in data]
        segmentations = [r["segmentation"] for r in data]
        texts = [s["counts"] for s in segmentations]
        rle_sizes = [s["size"] for s in segmentations]
    except (KeyError, TypeError):
        return None
    category_ids = [r.get("category_id", _ABSENT) for r in data]
    if not (
        set(map(type, image_ids)) <= {int}
        and set(map(type, scores)) <= {int, float}
        and set(map(type, texts)) <= {str}
        and set(map(type, category_ids)) <= {int, object}
        and (set(categories) | {_ABSENT}).issuperset(category_ids)
        and all(texts)
    ):
        return None
    expected = {i: list(size) for i, size in sizes.items()}
    if (
        rle_sizes != [expected.get(i, s) for i, s in zip(image_ids, rle_sizes, strict=True)]
        or any(
            not _is_size(s) for i, s in zip(image_ids, rle_sizes, strict=True) if i not in expected
        )
        or not set(map(type, itertools.chain.from_iterable(rle_sizes))) <= {int}  # not 120.0
    ):
        return None
    score = np.asarray(scores, dtype=np.float64)
    try:
        text = "".join(texts).encode("ascii")
    except UnicodeEncodeError:
        return None
    offset = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)), out=offset[1:])
    codes = np.frombuffer(text, np.uint8)
    if (
        not np.isfinite(score).all()
        or ((codes < 48) | (codes > 111)).any()
        or (len(texts) and ((codes[offset[1:] - 1] - 48) & 0x20).any())
    ):
        return None
    # a category's rank is its position among the sorted category ids (-1: no category_id)
    rank = {c: r for r, c in enumerate(sorted(categories))}
    ranks = np.fromiter(map(rank.get, category_ids, itertools.repeat(-1)), np.int64, len(data))
    return np.asarray(image_ids, np.int64), score, ranks, text, offset


_PARTS: list[tuple[memoryview, int]] = []  # (part, where its counts text goes in _TEXT)
_TEXT: mmap.mmap | None = None
_CHECKS: tuple = ()


def _set_parts(parts: list[tuple[memoryview, int]], text: mmap.mmap, checks: tuple) -> None:
    global _PARTS, _TEXT, _CHECKS
    worker_process()
    _PARTS, _TEXT, _CHECKS = parts, text, checks


def _parse_part(k: int) -> tuple | None:
    """`_columns` of part k, its counts text written into the shared _TEXT, not sent back."""
    part, start = _PARTS[k]
    with gc_paused():
        try:
            data = orjson.loads(part)
        except orjson.JSONDecodeError:
            return None
        columns = _columns(data, *_CHECKS) if isinstance(data, list) else None
    if columns is None:
        return None
    *arrays, text, offset = columns
    assert _TEXT is not None
    _TEXT[start : start + len(text)] = text
    return (*arrays, offset + start)


def _parse_in_parts(
    raw: bytearray | mmap.mmap,
    sizes: Mapping[int, tuple[int, int]],
    categories: Collection[int],
    workers: int,
) -> tuple | None:
    """`_columns` of the whole file from `workers` parts parsed in parallel, or None.

    The parts are views of the file's bytes: at each seam `}, {` the comma becomes the closing
    `]` of one part and the space before `{` the opening `[` of the next (seams without a space
    are not cut), and both are put back once the parts are parsed. Each worker writes its
    counts text into a shared anonymous map at its part's own offset (a part's counts are no
    longer than the part), which forked workers inherit: nothing large goes through a pipe.
    """
    first, last = raw.find(b"["), raw.rfind(b"]")
    if first < 0 or raw[:first].strip() or raw[last + 1 :].strip():
        return None
    bounds, seams = [first], []
    for k in range(1, workers):
        seam = _SEAM.search(raw, max(bounds[-1] + 1, first + (last - first) * k // workers))
        if seam is None:
            break
        comma, opening = raw.find(b",", seam.start()), seam.end() - 2  # before `{`
        if opening > comma:
            seams.append((comma, opening, raw[opening]))
            raw[comma], raw[opening] = ord("]"), ord("[")
            bounds += [comma + 1, opening]
    bounds.append(last + 1)
    text = mmap.mmap(-1, len(raw))
    try:
        if not seams:
            return None
        view = memoryview(raw)
        parts = [(view[a:b], a) for a, b in zip(bounds[0::2], bounds[1::2], strict=True)]
        context = multiprocessing.get_context("fork")
        checks = (dict(sizes), set(categories))
        with context.Pool(len(parts), _set_parts, (parts, text, checks)) as pool:
            columns = pool.map(_parse_part, range(len(parts)), chunksize=1)
        del parts, view
    finally:
        for comma, opening, space in seams:
            raw[comma], raw[opening] = ord(","), space
    if any(c is None for c in columns):
        return None
    ids, scores, cats, offsets = zip(*columns, strict=True)
    starts = np.concatenate([o[:-1] for o in offsets])
    ends = np.concatenate([o[1:] for o in offsets])
    return np.concatenate(ids), np.concatenate(scores), np.concatenate(cats), text, starts, ends


def _first_fault(
    data: list, sizes: Mapping[int, tuple[int, int]], categories: Collection[int], path: Path
) -> None:
    """Raise an IfcnError naming the first result that breaks a rule of `read_results`."""
    for k, result in enumerate(data):
        where = f"result {k}"
        if not isinstance(result, dict):
            raise IfcnError(f"{where} is not an object", path)
        image_id = result.get("image_id")
        if not is_int(image_id):
            raise IfcnError(f"{where}: image_id {image_id!r} is not an integer", path)
        if not is_number(result.get("score")):
            raise IfcnError(f"{where}: score {result.get('score')!r} is not a finite number", path)
        if "category_id" in result:
            category = result["category_id"]
            if not is_int(category) or category not in categories:
                # COCOeval (useCats=0) would silently drop it: say so instead
                raise IfcnError(
                    f"{where}: category_id {category!r} is not in the ground truth", path
                )
        rle = result.get("segmentation")
        if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or not rle["counts"]:
            raise IfcnError(f"{where}: segmentation is not a compressed RLE", path)
        text = rle["counts"]
        if not all("0" <= c <= "o" for c in text) or (ord(text[-1]) - 48) & 0x20:
            raise IfcnError(f"{where}: RLE counts are not COCO's compressed text", path)
        size = rle.get("size")
        if not _is_size(size):
            raise IfcnError(f"{where}: RLE size {size!r} is not [height, width]", path)
        if image_id in sizes and size != list(sizes[image_id]):
            h, w = sizes[image_id]
            raise IfcnError(f"{where}: RLE size {size} but image {image_id} is {h}x{w}", path)
    raise AssertionError("read_results found a fault that _first_fault does not")


def _is_size(size: Any) -> bool:
    return isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)


def write_json_atomic(data: Any, path: str | Path) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))


def _bytes_rle(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode()
    return {"size": [int(v) for v in rle["size"]], "counts": counts}
