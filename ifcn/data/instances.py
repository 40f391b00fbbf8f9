"""COCO instances JSON, the data contract (DESIGN §3): its one validator and its one loader.

Every stage that reads a COCO instances JSON (training, inference, evaluation, pictures, the
classifier, `data check`, `data convert` in and out) goes through `read_instances` /
`validate_instances`, so a file is judged by the same rules wherever it enters. Besides the
shape (ids are integers, references resolve, nothing is repeated) the rules are numeric: sizes
positive and bounded, numbers finite, polygon vertices near their image, and every RLE decoded
and checked to cover exactly its image's pixels (`ifcn.data.rle`). pycocotools trusts its input:
a corrupt `counts` string decodes to areas larger than the image and overruns the buffer
`decode` fills, and a 1e12 polygon vertex makes its rasteriser allocate without bound. So the
ground-truth masks come from the validated records only: `Instances.rle` converts one, and
`Instances.coco` builds pycocotools' COCO index (for COCOeval and the training samples) from
the records with every mask already compressed RLE, never from the raw file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ifcn.data.jsonio import gc_paused, is_int, is_number, parse_json, read_bytes
from ifcn.data.masks import MaskTable, PolygonTable, encode_segmentations, segmentation_to_rle
from ifcn.data.rle import MAX_PIXELS, bytes_rle, rle_fault, rle_text_faults
from ifcn.errors import IfcnError

if TYPE_CHECKING:  # pycocotools.coco is imported by `Instances.coco`, which needs it
    from pycocotools.coco import COCO

# A polygon vertex may lie outside its image (it is clipped) by at most one image side.
POLYGON_MARGIN = 1.0
NUMBER_TYPES = frozenset((int, float))  # of JSON numbers as orjson parses them
PLAIN_NAMES = "file names with '\\' separators or a leading './' (read as plain '/' paths)"


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


def require_coco_shape(data: Any, path: str | Path) -> None:
    """Raise unless `data` has COCO's images/annotations/categories lists."""
    if not isinstance(data, dict):
        raise IfcnError("not a COCO instances JSON (top level is not an object)", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise IfcnError(f"not a COCO instances JSON (no '{key}' list)", path)


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
    polygons: PolygonTable = field(default_factory=lambda: PolygonTable.empty())
    sha256: str = ""  # of the file's bytes, when read from a file

    def image_size(self, image_id: int) -> tuple[int, int]:
        image = self.images[image_id]
        return image["height"], image["width"]

    def image_table(self) -> dict[int, dict]:
        """Image entries by id: file_name, height and width."""
        keys = ("file_name", "height", "width")
        return {image_id: {k: img[k] for k in keys} for image_id, img in self.images.items()}

    def rle(self, ann: dict) -> dict:
        """A validated annotation's mask as compressed RLE (str counts): the mask COCO.annToRLE
        makes, with polygon parts of fewer than 3 points left out."""
        height, width = self.image_size(ann["image_id"])
        return segmentation_to_rle(ann["segmentation"], height, width)

    def encode_masks(self, workers: int = 1) -> MaskTable:
        """Every annotation's mask (in `annotations` order) as compressed RLE with its area and
        tight box: what `rle` gives one by one, made in bulk over `workers` processes."""
        size = {i: (image["height"], image["width"]) for i, image in self.images.items()}
        sizes = np.array([size[a["image_id"]] for a in self.annotations], np.int64)
        sizes = sizes.reshape(-1, 2)
        return encode_segmentations(
            [a["segmentation"] for a in self.annotations],
            sizes,
            self.polygons,
            [a["id"] for a in self.annotations],
            workers,
        )

    def coco(self) -> COCO:
        """pycocotools' COCO index of the validated records: each annotation a copy with its
        mask as compressed RLE, `iscrowd` 0 or 1 and `area` the mask's where the file has
        none (COCOeval reads both keys unconditionally)."""
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO

        annotations = []
        for ann in self.annotations:
            rle = self.rle(ann)
            ann = {**ann, "segmentation": rle, "iscrowd": int(bool(ann.get("iscrowd", 0)))}
            if "area" not in ann:
                ann["area"] = float(mask_utils.area(bytes_rle(rle)))
            annotations.append(ann)
        coco = COCO()
        coco.dataset = {
            "images": list(self.images.values()),
            "annotations": annotations,
            "categories": list(self.categories.values()),
        }
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


def read_instances(path: str | Path, *, collect: bool = False) -> Instances:
    """Read and validate a COCO instances JSON (see `validate_instances`)."""
    path = Path(path)
    raw = read_bytes(path)
    with gc_paused():
        instances = validate_instances(parse_json(raw, path), path, collect=collect)
    instances.sha256 = hashlib.sha256(raw).hexdigest()
    return instances


def validate_instances(
    data: Any, path: str | Path, *, collect: bool = False, encoded_here: bool = False
) -> Instances:
    """Check every image, category and annotation of a COCO instances JSON.

    `encoded_here`: the compressed RLE texts of the annotations were made by pycocotools'
    encoder in this process (a converter's output), so they are not decoded again; every other
    rule applies.

    Problems (raised, or listed with `collect`): a record that is not an object; ids that are not
    integers or repeat; an annotation of an unknown image or category; an image size that is not
    a positive integer or exceeds MAX_PIXELS; a file name that is empty, absolute or climbs out of
    the image root with '..'; a missing segmentation; a polygon with an odd number of coordinates,
    a coordinate that is not a finite number or lies more than an image side outside its image;
    an RLE whose size is not its image's or whose runs do not cover exactly its pixels; an
    `area` or `bbox` that is not finite, negative or beyond the image; `iscrowd` other than 0/1.
    Quirks (tolerated, counted): boolean or missing `iscrowd`, polygon parts of fewer than 3
    points, polygon vertices outside the image, file names with '\\' separators or './'
    (the validated image entries hold them as plain '/' paths, `plain_file_name`).
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
    annotations, polygons = _validate_annotations(
        data["annotations"], images, refused, categories, findings, encoded_here
    )
    return Instances(path, data, images, categories, annotations, findings, polygons)


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
        plain = plain_file_name(image["file_name"])
        if plain != image["file_name"]:
            findings.quirks[PLAIN_NAMES] += 1
            image = {**image, "file_name": plain}
        if "ignore" in image:
            reason = rle_fault(image["ignore"], height, width)
            if reason:
                findings.problem(f"{where}: 'ignore' {reason}")
                continue
            rles.append((image["id"], image["ignore"], height, width))
        out[image["id"]] = image
    for image_id, reason in _string_faults(rles):
        findings.problem(f"image {image_id}: 'ignore' {reason}")
        del out[image_id]
    return out


def plain_file_name(name: str) -> str:
    """A file name as every stage joins it to the image root: '/' separators, no leading './'.
    Windows exports write 'sub\\a.jpg', which no POSIX path lookup finds."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def file_name_fault(name: Any) -> str | None:
    """Why `name` cannot be a file name relative to an image root, or None if it can."""
    if not isinstance(name, str) or not name.strip():
        return "file_name is missing or empty"
    if "\x00" in name:
        return "file_name holds a NUL character"
    if not name.startswith("/") and ".." not in name and "\\" not in name and ":" not in name:
        return None  # a plain relative name (nearly all of them): no path parsing needed
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
    encoded_here: bool = False,
) -> tuple[list[dict], PolygonTable]:
    kept: dict[int, dict] = {}
    seen: set[int] = set()
    rles: list[tuple[int, Any, int, int]] = []
    polygons: list[tuple[int, list, int, int]] = []
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
        else:
            polygons.append((aid, ann["segmentation"], height, width))
        kept[aid] = ann
    polygon_faults, table = _polygon_faults(polygons, findings)
    for aid, reason in [*polygon_faults, *([] if encoded_here else _string_faults(rles))]:
        findings.problem(f"annotation {aid}: {reason}")
        del kept[aid]
    return list(kept.values()), table


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
    if not isinstance(segmentation, list):  # polygons are judged together (`_polygon_faults`)
        reason = rle_fault(segmentation, height, width)
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


def _polygon_faults(
    polygons: list[tuple[int, list, int, int]], findings: Findings
) -> tuple[list[tuple[int, str]], PolygonTable]:
    """(key, reason) of every polygon segmentation among (key, polygons, h, w) that is refused,
    counting the quirks of the others, and the vertices of the others as a `PolygonTable`:
    `_polygons_fault`'s rules, judged over all vertices of all annotations at once (a
    COCO-sized file has 40 million). An annotation that the vectorised pass flags is judged
    again, alone, by `_polygons_fault`, which says why."""
    if not polygons:
        return [], PolygonTable.empty()
    segmentations = [p[1] for p in polygons]
    parts = list(chain.from_iterable(segmentations))
    owner = np.repeat(np.arange(len(polygons)), [len(s) for s in segmentations])
    lengths = np.fromiter((len(p) if type(p) is list else -1 for p in parts), np.int64, len(parts))
    suspect = np.zeros(len(polygons), bool)
    suspect[owner[(lengths < 0) | (lengths % 2 == 1)]] = True
    good = np.flatnonzero(~suspect[owner])
    if not NUMBER_TYPES.issuperset(map(type, chain.from_iterable(parts[i] for i in good))):
        for i in good.tolist():
            if not NUMBER_TYPES.issuperset(map(type, parts[i])):
                suspect[owner[i]] = True
        good = np.flatnonzero(~suspect[owner])
    sizes = np.array([(p[2], p[3]) for p in polygons], np.float64)
    lengths, owner = lengths[good], owner[good]
    xy = np.fromiter(chain.from_iterable(parts[i] for i in good), np.float64, int(lengths.sum()))
    vertices = lengths // 2
    filled = np.flatnonzero(vertices > 0)
    outside = np.zeros(len(polygons), bool)
    if len(filled):
        starts = (np.cumsum(vertices) - vertices)[filled]
        x, y = xy[0::2], xy[1::2]
        nonfinite = np.add.reduceat(~np.isfinite(x) | ~np.isfinite(y), starts) > 0
        x0, y0 = np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts)
        x1, y1 = np.maximum.reduceat(x, starts), np.maximum.reduceat(y, starts)
        height, width = sizes[owner[filled], 0], sizes[owner[filled], 1]
        lo_x, lo_y = -POLYGON_MARGIN * width, -POLYGON_MARGIN * height
        far = (x0 < lo_x) | (y0 < lo_y) | (x1 > width - lo_x) | (y1 > height - lo_y)
        suspect[owner[filled[nonfinite | far]]] = True
        outside[owner[filled[(x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height)]]] = True
    short = int(((lengths < 6) & ~suspect[owner]).sum())
    if short:
        findings.quirks["polygon parts with fewer than 3 points (left out)"] += short
    clipped = int((outside & ~suspect).sum())
    if clipped:
        findings.quirks["polygons reaching outside their image (clipped)"] += clipped
    faults = []
    for k in np.flatnonzero(suspect).tolist():
        key, segmentation, height, width = polygons[k]
        reason = _polygons_fault(segmentation, height, width, findings)
        if reason:
            faults.append((key, reason))
    ends = np.cumsum(lengths)
    passed = np.flatnonzero(~suspect)
    part_count = np.bincount(owner, minlength=len(polygons))
    table = PolygonTable(
        keys=np.array([polygons[k][0] for k in passed.tolist()], np.int64),
        first_part=(np.cumsum(part_count) - part_count)[passed],
        parts=part_count[passed],
        part_start=ends - lengths,
        part_length=lengths,
        xy=xy,
        clipped=outside[passed],
    )
    return faults, table


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


def read_image_table(json_path: str | Path) -> dict[int, dict]:
    """Image entries of a validated COCO JSON by id (file_name, height, width): from its check
    record when it has one (`ifcn.data.store`, which builds on this module)."""
    from ifcn.data.store import read_image_set

    return read_image_set(json_path).images
