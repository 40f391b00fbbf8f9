"""Train and evaluation sets must not share an image (paper §4.1; issue 14).

An image is shared when both COCO JSONs list it under the same id and file name (VOC and SBD
name images alike and `ifcn data convert` derives ids from the names, so one image has one id
in both), or when both entries point at the same file on disk. Ids alone are not enough:
labelling-tool exports number each split's images from 0, so equal ids often mean different
images.
"""

from __future__ import annotations

import os
from pathlib import Path

from ifcn.data.instances import Instances, read_instances
from ifcn.errors import IfcnError

LISTED = 5


def recorded_image_root(instances: Instances) -> Path | None:
    """The image root a converted JSON records in info.image_root, relative to its folder."""
    info = instances.data.get("info")
    if isinstance(info, dict) and isinstance(info.get("image_root"), str):
        return (instances.path.parent / info["image_root"]).resolve()
    return None


def shared_images(
    first: Instances, first_root: Path | None, second: Instances, second_root: Path | None
) -> list[int]:
    """Ids (in `second`) of the images that `second` shares with `first`, sorted."""
    names = {(i, image["file_name"]) for i, image in first.images.items()}
    files = set()
    if first_root is not None and second_root is not None:
        files = {os.path.realpath(first_root / im["file_name"]) for im in first.images.values()}
    return sorted(
        i
        for i, image in second.images.items()
        if (i, image["file_name"]) in names
        or (files and os.path.realpath(second_root / image["file_name"]) in files)
    )


def require_disjoint(
    train_json: str | Path,
    val_json: str | Path,
    train_images: str | Path | None = None,
    val_images: str | Path | None = None,
) -> int:
    """Raise an IfcnError naming `val_json` if it shares an image with `train_json`.

    Image roots default to the JSONs' info.image_root. Returns the number of val images.
    """
    train, val = read_instances(train_json), read_instances(val_json)
    train_root = Path(train_images) if train_images is not None else recorded_image_root(train)
    val_root = Path(val_images) if val_images is not None else recorded_image_root(val)
    shared = shared_images(train, train_root, val, val_root)
    if shared:
        listed = ", ".join(map(str, shared[:LISTED])) + (", ..." if len(shared) > LISTED else "")
        raise IfcnError(
            f"{len(shared)} of its {len(val.images)} images are also training images in "
            f"{train_json} (ids {listed}); evaluation images must not be trained on",
            val_json,
        )
    return len(val.images)
