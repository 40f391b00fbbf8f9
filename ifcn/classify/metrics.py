"""Average precision of instance segmentation, the protocols of the paper's Table 4.

- ``voc``: SDS's region AP (AP^r; Hariharan et al., ECCV 2014), which SDS, Hypercolumn, CFM,
  MNC and the paper report on PASCAL VOC. Per class, the results of all images are ranked by
  score; each takes the ground-truth mask of its class and image it overlaps most (mask IoU);
  it is a true positive if that IoU reaches the threshold and no higher-scored result took
  that mask first, else a false positive (VOC's rule: a result whose best mask is taken does
  not fall back to its second best). Crowd masks (``iscrowd``) play VOC's "difficult" objects:
  not counted as positives, and a result whose best mask is one counts neither way. AP is the
  area under the precision-recall curve with precision made non-increasing, VOC 2010's
  all-points ``VOCap``.
- ``voc11``: the same region-AP matching, AP VOC 2007's 11-point mean (the best precision at
  recall >= 0, 0.1, …, 1, each taking 0 where no recall reaches it), as MNC's released
  evaluation computes it (``voc_eval_sds`` calls ``voc_ap(rec, prec, use_07_metric=True)``).
  The paper does not say which AP its Table 4 used; its figures come with MNC's classifier.
- ``coco``: pycocotools' COCOeval (iouType 'segm'; greedy matching that falls back to the
  next unmatched mask, crowd regions absorbing results) at the same thresholds, AP the mean of
  its interpolated precision at 101 recall points (area 'all', the last maxDets).

Both count at most ``max_dets`` results per image and class (COCOeval's maxDets) and give AP
per category (None where it has no ground-truth object); mAP is their mean over the others.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

DESCRIPTION = {
    "voc": "SDS region AP (AP^r): VOC area under the precision-recall curve",
    "voc11": "SDS region AP (AP^r): VOC 2007 11-point mean precision, as MNC's evaluation",
    "coco": "COCO AP (pycocotools COCOeval, 101-point interpolated precision)",
}


def quiet() -> contextlib.AbstractContextManager:
    """pycocotools prints progress on stdout; stdout is the CLI's table."""
    return contextlib.redirect_stdout(io.StringIO())


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision-recall curve with precision made non-increasing (VOCap)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc11_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2007's 11-point AP: the mean over t = 0, 0.1, …, 1 of the best precision at recall
    >= t (0 where none), with MNC's thresholds (``np.arange(0, 1.1, 0.1)``)."""
    points = [
        float(precision[recall >= t].max()) if (recall >= t).any() else 0.0
        for t in np.arange(0.0, 1.1, 0.1)
    ]
    return float(np.mean(points))


CurveAP = Callable[[np.ndarray, np.ndarray], float]
AP_OF_CURVE: dict[str, CurveAP] = {"voc": voc_ap, "voc11": voc11_ap}


def _top_per_image_and_class(results: Sequence[dict], max_dets: int) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for result in results:
        groups[(result["image_id"], result["category_id"])].append(result)
    kept = []
    for group in groups.values():
        group.sort(key=lambda r: -float(r["score"]))
        kept += group[:max_dets]
    return kept


def region_ap(
    gt: COCO,
    results: Sequence[dict],
    image_ids: Sequence[int],
    category_id: int,
    threshold: float,
    max_dets: int,
    curve_ap: CurveAP = voc_ap,
) -> float | None:
    """SDS/VOC region AP of one category at mask IoU ``threshold`` (None: no GT object), the
    precision-recall curve reduced by ``curve_ap`` (all-points or 11-point).

    ``gt`` is `Instances.coco()`: every mask already compressed RLE."""
    wanted = set(image_ids)
    positives: dict[int, list] = defaultdict(list)
    difficult: dict[int, list] = defaultdict(list)
    for ann in gt.loadAnns(gt.getAnnIds(imgIds=list(image_ids), catIds=[category_id])):
        (difficult if ann["iscrowd"] else positives)[ann["image_id"]].append(ann["segmentation"])
    num_positives = sum(len(v) for v in positives.values())
    if not num_positives:
        return None
    mine = [r for r in results if r["category_id"] == category_id and r["image_id"] in wanted]
    mine = _top_per_image_and_class(mine, max_dets)
    order = sorted(range(len(mine)), key=lambda i: -float(mine[i]["score"]))
    taken: dict[int, np.ndarray] = {i: np.zeros(len(positives[i]), bool) for i in positives}
    outcome = []  # 1 true positive, 0 false positive; ignored results are left out
    for index in order:
        result = mine[index]
        image_id = result["image_id"]
        masks = positives[image_id] + difficult[image_id]
        if not masks:
            outcome.append(0)
            continue
        ious = mask_utils.iou([result["segmentation"]], masks, [0] * len(masks))
        ious = np.asarray(ious).reshape(-1)
        best = int(ious.argmax())
        if ious[best] < threshold:
            outcome.append(0)
        elif best >= len(positives[image_id]):
            continue  # a crowd ("difficult") mask: neither true nor false
        elif taken[image_id][best]:
            outcome.append(0)
        else:
            taken[image_id][best] = True
            outcome.append(1)
    hits = np.cumsum(np.asarray(outcome, np.float64))
    counted = np.arange(1, len(outcome) + 1, dtype=np.float64)
    return curve_ap(hits / num_positives, hits / np.maximum(counted, 1.0))


def voc_region_aps(
    gt: COCO,
    results: Sequence[dict],
    image_ids: Sequence[int],
    thresholds: Sequence[float],
    max_dets: int,
    curve_ap: CurveAP = voc_ap,
) -> dict[int, list[float | None]]:
    """Region AP per category id at each threshold."""
    return {
        category: [
            region_ap(gt, results, image_ids, category, threshold, max_dets, curve_ap)
            for threshold in thresholds
        ]
        for category in sorted(gt.getCatIds())
    }


def _detections(gt: COCO, results: list[dict]) -> COCO:
    """COCO.loadRes, which cannot take an empty list: then an empty result set."""
    if results:
        with quiet():
            return gt.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in results])
    empty = COCO()
    empty.dataset = {"images": list(gt.dataset["images"]), "annotations": []}
    empty.dataset["categories"] = list(gt.dataset["categories"])
    with quiet():
        empty.createIndex()
    return empty


def coco_aps(
    gt: COCO,
    results: list[dict],
    image_ids: Sequence[int],
    thresholds: Sequence[float],
    max_dets: int,
) -> dict[int, list[float | None]]:
    """COCOeval's AP per category id at each threshold."""
    evaluator = COCOeval(gt, _detections(gt, results), iouType="segm")
    evaluator.params.iouThrs = np.array(thresholds, dtype=np.float64)
    evaluator.params.maxDets = [max_dets]
    evaluator.params.imgIds = list(image_ids)
    with quiet():
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    aps = {}
    for k, category in enumerate(int(c) for c in evaluator.params.catIds):
        curves = [precision[t, :, k, 0, -1] for t in range(len(thresholds))]
        aps[category] = [float(c.mean()) if (c > -1).all() else None for c in curves]
    return aps


def average_precisions(
    protocol: str,
    gt: COCO,
    results: list[dict],
    image_ids: Sequence[int],
    thresholds: Sequence[float],
    max_dets: int,
) -> dict[int, list[float | None]]:
    """AP per category id and threshold under ``protocol`` (``voc``, ``voc11`` or ``coco``)."""
    if protocol in AP_OF_CURVE:
        return voc_region_aps(gt, results, image_ids, thresholds, max_dets, AP_OF_CURVE[protocol])
    return coco_aps(gt, results, image_ids, thresholds, max_dets)
