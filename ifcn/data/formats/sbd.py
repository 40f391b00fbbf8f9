"""Semantic Boundaries Dataset (SBD, Hariharan et al. 2011): inst/*.mat and cls/*.mat.

`inst/<name>.mat` holds the struct GTinst: Segmentation (H×W, pixel = instance number, 0
background), Boundaries (one sparse map per instance) and Categories (the VOC class, 1-20, of
instance i at row i). The instance's class comes from GTinst.Categories (DESIGN §3);
`cls/<name>.mat` (GTcls.Segmentation, per-pixel class) is used only to cross-check it.

The images are those of SBD's own split list (`<split>.txt`), or of any list of names, such as
VOC 2012's `ImageSets/Main/train.txt` and `val.txt`: the paper's split (§4.1, as SDS, Hypercolumns
and MNC use it) is SBD's instances on the VOC 2012 train images for training and on the VOC 2012
val images for evaluation, which share no image. Listed images that SBD does not annotate (no
`inst/<name>.mat`) are left out and counted in the notes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import scipy.io

from ifcn.data.formats import (
    VOC_CLASSES,
    VOID,
    Converted,
    apply_exclude,
    image_size,
    map_images,
    name_image_ids,
    read_name_list,
    voc_categories,
)
from ifcn.data.instances import assemble_dataset
from ifcn.data.masks import instances_from_label_map
from ifcn.data.rle import encode_mask
from ifcn.errors import IfcnError


def convert_sbd(
    root: Path,
    split: str | None,
    exclude: Path | None = None,
    workers: int = 1,
    image_list: Path | None = None,
) -> Converted:
    """Convert the images of <root>/<split>.txt, or of `image_list`, that SBD annotates
    (root = benchmark_RELEASE/dataset)."""
    root = Path(root)
    notes: list[str] = []
    if image_list is None:
        names = read_name_list(root / f"{split}.txt")
        source = f"SBD {split}"
    else:
        listed = read_name_list(image_list)
        names = [n for n in listed if (root / "inst" / f"{n}.mat").is_file()]
        if listed and not names:
            message = f"SBD annotates none of the {len(listed)} images listed in {image_list}"
            raise IfcnError(message, root / "inst")
        notes.append(
            f"SBD annotates {len(names)} of the {len(listed)} images listed in {image_list}; "
            f"{len(listed) - len(names)} without inst/<name>.mat left out"
        )
        source = f"SBD instances of the images in {Path(image_list).name}"
    names = apply_exclude(names, exclude, notes)
    results = map_images(
        functools.partial(_convert_image, root), names, len(names), workers, f"sbd {split}"
    )
    ids = name_image_ids(names)
    images = [{"id": i, **r["image"]} for i, r in zip(ids, results, strict=True)]
    disagree = sum(r["disagree"] for r in results)
    if disagree:
        notes.append(
            f"{disagree} instances: GTinst.Categories differs from the majority class in "
            "cls/*.mat; GTinst.Categories kept"
        )
    dataset = assemble_dataset(
        images,
        [r["annotations"] for r in results],
        voc_categories(),
        {"description": source, "source_format": "sbd"},
    )
    return Converted(dataset, root / "img", notes)


def load_mat_struct(path: Path, struct: str) -> object:
    """The struct `struct` of a MATLAB file, its fields as attributes."""
    if not path.is_file():
        raise IfcnError("file not found", path)
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError... on non-.mat input
        raise IfcnError(f"cannot read MATLAB file ({exc})", path) from None
    if struct not in mat:
        raise IfcnError(f"no {struct} struct in this .mat (keys: {_keys(mat)})", path)
    return mat[struct]


def _keys(mat: dict) -> str:
    return ", ".join(k for k in mat if not k.startswith("__")) or "none"


def _field(struct: object, name: str, path: Path) -> np.ndarray:
    if not hasattr(struct, name):
        raise IfcnError(f"the struct has no field {name}", path)
    return np.asarray(getattr(struct, name))


def _convert_image(root: Path, name: str) -> dict:
    image_path = root / "img" / f"{name}.jpg"
    width, height = image_size(image_path)
    inst_path = root / "inst" / f"{name}.mat"
    gt = load_mat_struct(inst_path, "GTinst")
    seg = _field(gt, "Segmentation", inst_path)
    cats = np.atleast_1d(_field(gt, "Categories", inst_path)).astype(np.int64).ravel()
    if seg.shape != (height, width):
        raise IfcnError(
            f"GTinst.Segmentation size {seg.shape[1]}x{seg.shape[0]} differs from its image "
            f"{image_path.name} ({width}x{height})",
            inst_path,
        )
    indices = [int(i) for i in np.unique(seg) if i not in (0, VOID)]
    if indices and max(indices) > len(cats):
        raise IfcnError(
            f"instance {max(indices)} has no entry in GTinst.Categories ({len(cats)} entries)",
            inst_path,
        )
    bad = [int(c) for c in cats if not 1 <= c <= len(VOC_CLASSES)]
    if bad:
        raise IfcnError(f"GTinst.Categories holds {bad[0]}, not a VOC class (1-20)", inst_path)
    categories = {i: int(cats[i - 1]) for i in indices}
    image = {"file_name": image_path.name, "height": height, "width": width}
    if (seg == VOID).any():
        image["ignore"] = encode_mask(seg == VOID)
    return {
        "image": image,
        "annotations": instances_from_label_map(seg, categories),
        "disagree": _cross_check(root / "cls" / f"{name}.mat", seg, categories),
    }


def _cross_check(cls_path: Path, seg: np.ndarray, categories: dict[int, int]) -> int:
    """Instances whose GTinst class is not the majority of GTcls.Segmentation under them."""
    if not cls_path.is_file():
        return 0
    classes = _field(load_mat_struct(cls_path, "GTcls"), "Segmentation", cls_path)
    if classes.shape != seg.shape:
        raise IfcnError(
            f"GTcls.Segmentation size {classes.shape[1]}x{classes.shape[0]} differs from "
            f"GTinst.Segmentation ({seg.shape[1]}x{seg.shape[0]})",
            cls_path,
        )
    disagree = 0
    for index, category in categories.items():
        counts = np.bincount(classes[seg == index].ravel().astype(np.int64), minlength=256)
        counts[0] = counts[VOID] = 0
        disagree += bool(counts.any()) and int(counts.argmax()) != category
    return disagree
