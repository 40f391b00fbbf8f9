"""A dataset in its own format -> COCO instances JSON + its image root.

Everything downstream reads only the COCO JSON (DESIGN §3). The JSON's `info.image_root` records
the folder its file names are relative to (relative to the JSON's own folder); images are not
copied. What the conversion changed is printed and kept in `info.conversion_notes`.

The command `ifcn data convert` is `ifcn.commands.data_convert`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ifcn.data.formats import Converted
from ifcn.data.formats.coco import convert_coco
from ifcn.data.formats.pennfudan import convert_pennfudan
from ifcn.data.formats.sbd import convert_sbd
from ifcn.data.formats.voc import convert_voc
from ifcn.data.instances import validate_instances
from ifcn.data.jsonio import write_json_atomic
from ifcn.errors import IfcnError

FORMATS = ("voc", "sbd", "coco", "pennfudan")
_SPLIT_CONVERTERS = {"voc": convert_voc, "sbd": convert_sbd, "pennfudan": convert_pennfudan}


def coco_sources(
    root: Path | None, split: str | None, json_path: Path | None, images: Path | None
) -> tuple[Path, Path]:
    """The input JSON and image root of a COCO-format dataset.

    Without --json, ROOT/annotations/instances_SPLIT.json (COCO's layout) or
    ROOT/SPLIT/_annotations.coco.json (Roboflow's); the images default to ROOT/SPLIT, or to the
    JSON's folder when only --json is given.
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
) -> Converted:
    """Convert one split of a dataset; see `FORMATS` and the per-format modules."""
    if fmt == "coco":
        if exclude is not None:
            raise IfcnError("--exclude applies to voc, sbd and pennfudan; use --first-n for coco")
        if image_list is not None:
            raise IfcnError("--image-list applies to --format sbd only")
        src, image_root = coco_sources(root, split, json_path, images)
        return convert_coco(src, image_root, first_n=first_n, workers=workers)
    if fmt not in _SPLIT_CONVERTERS:
        raise IfcnError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if image_list is not None and fmt != "sbd":
        raise IfcnError("--image-list applies to --format sbd only")
    if first_n is not None or json_path is not None or images is not None:
        raise IfcnError("--first-n, --json and --images apply to --format coco only")
    if root is None or (split is None) == (image_list is None):
        either = "--split NAME or --image-list FILE" if fmt == "sbd" else "--split NAME"
        raise IfcnError(f"--format {fmt} needs --root DIR and {either}")
    if not root.is_dir():
        raise IfcnError("dataset folder not found", root)
    lists = {"image_list": image_list} if fmt == "sbd" else {}
    return _SPLIT_CONVERTERS[fmt](root, split, exclude=exclude, workers=workers, **lists)


def write_converted(converted: Converted, out: Path) -> None:
    """Validate the converted JSON as every reader will, then write it atomically, recording
    its image root and the conversion notes."""
    out = Path(out)
    validate_instances(converted.dataset, out)
    info = converted.dataset.setdefault("info", {})
    info["image_root"] = os.path.relpath(converted.image_root.resolve(), out.parent.resolve())
    info["conversion_notes"] = list(converted.notes)
    write_json_atomic(converted.dataset, out)
