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

from ifcn.data.store import ImageSet, read_image_set
from ifcn.errors import IfcnError

LISTED = 5


def recorded_image_root(json_path: str | Path, info: object) -> Path | None:
    """The image root a converted JSON records in info.image_root, relative to its folder."""
    if isinstance(info, dict) and isinstance(info.get("image_root"), str):
        return (Path(json_path).parent / info["image_root"]).resolve()
    return None


def shared_images(
    first: ImageSet, first_root: Path | None, second: ImageSet, second_root: Path | None
) -> list[int]:
    """Ids (in `second`) of the images that `second` shares with `first`, sorted.

    `second` (the evaluation set) is held in sets and `first` (the training set: COCO's 118k
    images) read one image at a time, so that its entries, names and paths are never all held.
    """
    names = {(i, image["file_name"]) for i, image in second.images.items()}
    files: dict[str, list[int]] = {}
    if first_root is not None and second_root is not None:
        for i, image in second.images.items():
            files.setdefault(os.path.realpath(second_root / image["file_name"]), []).append(i)
    shared = set()
    for i, image in first.images.items():
        if (i, image["file_name"]) in names:
            shared.add(i)
        if files:
            shared.update(files.get(os.path.realpath(first_root / image["file_name"]), ()))
    return sorted(shared)


def require_disjoint(
    train_json: str | Path,
    val_json: str | Path,
    train_images: str | Path | None = None,
    val_images: str | Path | None = None,
    *,
    train: ImageSet | None = None,
) -> int:
    """Raise an IfcnError naming `val_json` if it shares an image with `train_json`.

    Image roots default to the JSONs' info.image_root. The image tables come from the JSONs'
    check records when they have them (`read_image_set`), the training JSON's from `train` when
    the caller has read it. Returns the number of val images.
    """
    train = train if train is not None else read_image_set(train_json)
    val = read_image_set(val_json)
    train_root = (
        Path(train_images)
        if train_images is not None
        else recorded_image_root(train_json, train.info)
    )
    val_root = (
        Path(val_images) if val_images is not None else recorded_image_root(val_json, val.info)
    )
    shared = shared_images(train, train_root, val, val_root)
    if shared:
        listed = ", ".join(map(str, shared[:LISTED])) + (", ..." if len(shared) > LISTED else "")
        raise IfcnError(
            f"{len(shared)} of its {len(val.images)} images are also training images in "
            f"{train_json} (ids {listed}); evaluation images must not be trained on",
            val_json,
        )
    return len(val.images)
