"""mAP@0.5 and mAP@0.7 of instance segmentation (paper Table 4).

At the mask-level IoU thresholds 0.5 and 0.7 of SDS, Hypercolumn, CFM and MNC that the paper
compares with, under one of two protocols (`--ap`, config classify.ap): `voc`, SDS's region AP
(AP^r: VOC's area under the precision-recall curve, what the paper's VOC figures are), or
`coco`, pycocotools' COCOeval. mAP is the mean AP over the categories that have GT objects.
The output names the protocol. The results are checked first: an image or category the GT
does not know is an error, not a silent drop as in COCOeval.

The command `ifcn classify evaluate` is `ifcn.commands.classify_evaluate`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ifcn.classify.metrics import DESCRIPTION, average_precisions, quiet
from ifcn.data.cocojson import load_json, require_coco_shape
from ifcn.errors import IfcnError

IOU_THRESHOLDS = (0.5, 0.7)


def load_gt(path: Path) -> COCO:
    data = load_json(path)
    require_coco_shape(data, path)
    coco = COCO()
    coco.dataset = data
    try:
        with quiet():
            coco.createIndex()
        for ann in data["annotations"]:  # COCOeval reads both keys unconditionally
            ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
            if "area" not in ann:
                ann["area"] = float(mask_utils.area(coco.annToRLE(ann)))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise IfcnError(f"not a COCO instances JSON ({type(exc).__name__}: {exc})", path) from None
    return coco


def check_results(results: Any, gt: COCO, path: Path, gt_path: Path) -> list[dict]:
    """The results as COCOeval takes them; IfcnError naming `path` for anything it would drop."""
    if not isinstance(results, list):
        raise IfcnError("not a COCO results JSON (top level is not a list)", path)
    for k, result in enumerate(results):
        try:
            image_id, category = result["image_id"], result["category_id"]
            rle, score = result["segmentation"], float(result["score"])
            size, counts = rle["size"], rle["counts"]
        except (KeyError, TypeError, ValueError):
            raise IfcnError(
                f"result {k} lacks an image_id, a category_id, a score or an RLE segmentation",
                path,
            ) from None
        if image_id not in gt.imgs:
            raise IfcnError(f"result {k}: image_id {image_id!r} is not in {gt_path}", path)
        if category not in gt.cats:
            raise IfcnError(f"result {k}: category_id {category!r} is not in {gt_path}", path)
        if not isinstance(counts, str):
            raise IfcnError(f"result {k}: segmentation is not a compressed RLE", path)
        if not math.isfinite(score):
            raise IfcnError(f"result {k}: score is not a finite number", path)
        image = gt.imgs[image_id]
        if list(size) != [image["height"], image["width"]]:
            raise IfcnError(
                f"result {k}: RLE size {size} but image {image_id} is "
                f"{image['height']}x{image['width']} in {gt_path}",
                path,
            )
    return results


def evaluate_segm(
    gt_path: str | Path,
    results_path: str | Path,
    ap: str,
    max_dets: int = 100,
    first_n: int | None = None,
) -> dict[str, Any]:
    """mAP@0.5, mAP@0.7 and AP per category (None where a category has no GT object) under
    the protocol ``ap`` (config classify.ap; ``voc``: SDS region AP; ``coco``: COCOeval),
    counting ``max_dets`` results per image of the first ``first_n`` image ids (all: None)."""
    gt_path, results_path = Path(gt_path), Path(results_path)
    if max_dets < 1:
        raise IfcnError("--max-dets must be positive")
    gt = load_gt(gt_path)
    results = check_results(load_json(results_path), gt, results_path, gt_path)
    image_ids = sorted(gt.getImgIds())
    if first_n is not None:
        image_ids = image_ids[:first_n]
    aps = average_precisions(ap, gt, results, image_ids, IOU_THRESHOLDS, max_dets)
    per_category = []
    for category_id in sorted(aps):
        entry: dict[str, Any] = {"category_id": category_id, "name": gt.cats[category_id]["name"]}
        for threshold, value in zip(IOU_THRESHOLDS, aps[category_id], strict=True):
            entry[f"AP@{threshold}"] = value
        per_category.append(entry)
    summary: dict[str, Any] = {"ap": ap, "ap_protocol": DESCRIPTION[ap]}
    for threshold in IOU_THRESHOLDS:
        values = [e[f"AP@{threshold}"] for e in per_category if e[f"AP@{threshold}"] is not None]
        summary[f"mAP@{threshold}"] = float(np.mean(values)) if values else None
    wanted = set(image_ids)
    num_gt = sum(1 for a in gt.dataset["annotations"] if a["image_id"] in wanted)
    summary.update(
        per_category=per_category,
        num_images=len(image_ids),
        num_gt=num_gt,
        num_results=sum(1 for r in results if r["image_id"] in wanted),
        max_dets=max_dets,
        iou_thresholds=list(IOU_THRESHOLDS),
    )
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Per-category AP and the means, in percent as the paper's Table 4."""

    def cell(value: float | None) -> str:
        return f"{'-':>9}" if value is None else f"{100 * value:>9.1f}"

    heads = "".join(f"{'AP@' + str(t):>9}" for t in IOU_THRESHOLDS)
    lines = [
        f"ifcn classify evaluate: {summary['num_images']} images, {summary['num_gt']} GT objects, "
        f"{summary['num_results']} results; AP in % = {summary['ap_protocol']}",
        "",
        f"{'category':<20}{heads}",
    ]
    for entry in summary["per_category"]:
        name = f"{entry['name']} ({entry['category_id']})"
        lines.append(f"{name:<20}" + "".join(cell(entry[f"AP@{t}"]) for t in IOU_THRESHOLDS))
    lines.append(f"{'mean (mAP)':<20}" + "".join(cell(summary[f"mAP@{t}"]) for t in IOU_THRESHOLDS))
    return "\n".join(lines)
