"""mAP@0.5 and mAP@0.7 of instance segmentation (paper Table 4).

At the mask-level IoU thresholds 0.5 and 0.7 of SDS, Hypercolumn, CFM and MNC that the paper
compares with, under one of three protocols (`--ap`, config classify.ap): `voc`, SDS's region
AP (AP^r) with VOC's all-points area under the precision-recall curve; `voc11`, the same
matching with VOC 2007's 11-point mean, which MNC's released evaluation computes; or `coco`,
pycocotools' COCOeval. The paper does not say which AP its VOC figures are; they come with
MNC's classifier, so `voc11` is the likelier. mAP is the mean AP over the categories that have
GT objects.
The output names the protocol. Both files are checked first, each by its one validator: the
ground truth by `read_instances` (the masks pycocotools sees are the validated ones, converted
to RLE), the results by `read_results`; an image or category the GT does not know is an error,
not a silent drop as in COCOeval.

The command `ifcn classify evaluate` is `ifcn.commands.classify_evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ifcn.classify.metrics import DESCRIPTION, average_precisions
from ifcn.data.instances import Instances, read_instances
from ifcn.data.results import read_results
from ifcn.errors import IfcnError

IOU_THRESHOLDS = (0.5, 0.7)


def read_detections(path: Path, instances: Instances) -> list[dict]:
    """The results as COCOeval takes them, checked by the one results-JSON validator
    (`read_results`) against the GT; an image or category the GT does not know, or a result
    without a category, is an IfcnError naming `path` (COCOeval would drop it silently)."""
    sizes = {image_id: instances.image_size(image_id) for image_id in instances.images}
    found = read_results(path, sizes, instances.categories)
    unknown = np.flatnonzero(~np.isin(found.image_id, list(sizes)))
    if len(unknown):
        k = int(unknown[0])
        image_id = int(found.image_id[k])
        raise IfcnError(f"result {k}: image_id {image_id} is not in {instances.path}", path)
    unlabelled = np.flatnonzero(found.category_rank < 0)
    if len(unlabelled):
        raise IfcnError(f"result {int(unlabelled[0])} has no category_id", path)
    categories = sorted(instances.categories)
    counts = found.counts(np.arange(len(found.image_id)))
    return [
        {
            "image_id": image_id,
            "category_id": categories[rank],
            "segmentation": {"size": list(sizes[image_id]), "counts": text},
            "score": score,
        }
        for image_id, rank, text, score in zip(
            found.image_id.tolist(),
            found.category_rank.tolist(),
            counts,
            found.score.tolist(),
            strict=True,
        )
    ]


def evaluate_segm(
    gt_path: str | Path,
    results_path: str | Path,
    ap: str,
    max_dets: int = 100,
    first_n: int | None = None,
) -> dict[str, Any]:
    """mAP@0.5, mAP@0.7 and AP per category (None where a category has no GT object) under
    the protocol ``ap`` (config classify.ap; ``voc``/``voc11``: SDS region AP, all-points or
    11-point; ``coco``: COCOeval),
    counting ``max_dets`` results per image of the first ``first_n`` image ids (all: None)."""
    gt_path, results_path = Path(gt_path), Path(results_path)
    if max_dets < 1:
        raise IfcnError("--max-dets must be positive")
    instances = read_instances(gt_path)
    results = read_detections(results_path, instances)
    gt = instances.coco()
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
