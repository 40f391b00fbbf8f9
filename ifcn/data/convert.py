"""A dataset in its own format -> COCO instances JSON + its image root.

Everything downstream reads only the COCO JSON (DESIGN §3). The JSON's `info.image_root` records
the folder its file names are relative to (relative to the JSON's own folder); images are not
copied. What the conversion changed is printed and kept in `info.conversion_notes`.

The command `ifcn data convert` is `ifcn.commands.data_convert`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import orjson

from ifcn.atomic import write_bytes
from ifcn.data.formats import Converted, map_images
from ifcn.data.formats.coco import convert_coco
from ifcn.data.formats.pennfudan import convert_pennfudan
from ifcn.data.formats.sbd import convert_sbd
from ifcn.data.formats.voc import convert_voc
from ifcn.data.image_files import image_item
from ifcn.data.instances import validate_instances
from ifcn.data.jsonio import gc_paused
from ifcn.data.store import AnnotationStore, check_record, proof_path
from ifcn.errors import IfcnError

FORMATS = ("voc", "sbd", "coco", "pennfudan")
_SPLIT_CONVERTERS = {"voc": convert_voc, "sbd": convert_sbd, "pennfudan": convert_pennfudan}


def coco_sources(
    root: Path | None, split: str | None, json_path: Path | None, images: Path | None
) -> tuple[Path, Path]:
    """The input JSON and image root of a COCO-format dataset.

    Without --json, ROOT/annotations/instances_SPLIT.json (COCO's layout) or
    ROOT/SPLIT/_annotations.coco.json (Roboflow's); the images default to ROOT/SPLIT, or to the
    JSON's folder when only --json is given. (`official_layout` tells the first apart.)
    """
    if json_path is None:
        if root is None or split is None:
            raise IfcnError("--format coco needs --json FILE, or --root DIR with --split NAME")
        candidates = [
            root / "annotations" / f"instances_{split}.json",
            root / split / "_annotations.coco.json",
        ]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise IfcnError(
                f"no COCO JSON for split '{split}' (looked for {candidates[0]} and "
                f"{candidates[1]})",
                root,
            )
        json_path = found[0]
    if images is None:
        images = root / split if root is not None and split is not None else json_path.parent
    return json_path, images


def official_layout(json_path: Path, root: Path | None, split: str | None) -> bool:
    """Whether a COCO JSON is an official dataset's, found in COCO's own layout
    (ROOT/annotations/instances_SPLIT.json, as `ifcn data download` unpacks it)."""
    if root is None or split is None:
        return False
    return json_path == root / "annotations" / f"instances_{split}.json"


def convert(
    fmt: str,
    root: Path | None,
    split: str | None = None,
    *,
    json_path: Path | None = None,
    images: Path | None = None,
    first_n: int | None = None,
    exclude: Path | None = None,
    image_list: Path | None = None,
    workers: int = 1,
    area_bbox: str | None = None,
) -> Converted:
    """Convert one split of a dataset; see `FORMATS` and the per-format modules.

    COCO's `area_bbox` (see `ifcn.data.formats.coco`) defaults to "published" for a JSON in
    COCO's own layout (`official_layout`) and to "mask" for any other.
    """
    if fmt == "coco":
        if exclude is not None:
            raise IfcnError("--exclude applies to voc, sbd and pennfudan; use --first-n for coco")
        if image_list is not None:
            raise IfcnError("--image-list applies to --format sbd only")
        src, image_root = coco_sources(root, split, json_path, images)
        if area_bbox is None:
            area_bbox = "published" if official_layout(src, root, split) else "mask"
        return convert_coco(src, image_root, first_n=first_n, workers=workers, area_bbox=area_bbox)
    if fmt not in _SPLIT_CONVERTERS:
        raise IfcnError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if image_list is not None and fmt != "sbd":
        raise IfcnError("--image-list applies to --format sbd only")
    if first_n is not None or json_path is not None or images is not None:
        raise IfcnError("--first-n, --json and --images apply to --format coco only")
    if area_bbox is not None:
        raise IfcnError("--area-bbox applies to --format coco only (the others take the masks')")
    if root is None or (split is None) == (image_list is None):
        either = "--split NAME or --image-list FILE" if fmt == "sbd" else "--split NAME"
        raise IfcnError(f"--format {fmt} needs --root DIR and {either}")
    if not root.is_dir():
        raise IfcnError("dataset folder not found", root)
    lists = {"image_list": image_list} if fmt == "sbd" else {}
    return _SPLIT_CONVERTERS[fmt](root, split, exclude=exclude, workers=workers, **lists)


@gc_paused()
def write_converted(converted: Converted, out: Path, workers: int = 1) -> AnnotationStore | str:
    """Validate the converted JSON as every reader will (RLE texts that the converter encoded
    itself, with its MaskTable, are not decoded again) and read every image file it lists
    (`ifcn.data.image_files`), then write it atomically, recording its image root and the
    conversion notes, and record the check beside it (`ifcn.data.store`). Returns the record,
    or why it could not be written."""
    out = Path(out)
    info = converted.dataset.setdefault("info", {})
    info["image_root"] = os.path.relpath(converted.image_root.resolve(), out.parent.resolve())
    info["conversion_notes"] = list(converted.notes)
    made_here = converted.masks is not None  # the converter encoded every mask itself
    instances = validate_instances(converted.dataset, out, encoded_here=made_here)
    ids = sorted(instances.images)
    items = [
        (str(converted.image_root / instances.images[i]["file_name"]),
         instances.images[i]["height"], instances.images[i]["width"])
        for i in ids
    ]  # fmt: skip
    checked = map_images(image_item, items, len(items), workers, "images")
    faults = [(i, fault) for i, (fault, _) in zip(ids, checked, strict=True) if fault]
    if faults:
        image_id, fault = faults[0]
        name = instances.images[image_id]["file_name"]
        raise IfcnError(
            f"{len(faults)} of {len(ids)} image files under {converted.image_root} are not "
            f"usable (e.g. image {image_id} '{name}': {fault})",
            out,
        )
    masks = converted.masks
    if masks is None or len(masks.counts) != len(instances.annotations):
        masks = instances.encode_masks(workers)
    raw = orjson.dumps(converted.dataset)
    instances.sha256 = hashlib.sha256(raw).hexdigest()
    proof_path(out).unlink(missing_ok=True)  # a record of the file being replaced
    write_bytes(out, raw)
    stats = np.array([s for _, s in checked], np.int64).reshape(-1, 2)
    return check_record(instances, masks, checked_by="ifcn data convert", image_stats=stats)
