"""Mask Average Recall of proposals (paper §4, DESIGN §8): IoUs per image, then recall.

Mask IoUs are computed with pycocotools per image (in worker processes); the pairs with
IoU >= 0.5 go to `ifcn.evaluation.recall`, which reproduces pycocotools' COCOeval
(iouType='segm', useCats=0) or the best-IoU matching. Detections are ordered as COCOeval orders
them: by score, ties kept in the order COCOeval sees them (grouped by category in the GT's sorted
category order, then file order), and GTs in COCOeval's order (by category, then file order),
because ties in IoU go to the later GT. torch is never imported here: start-up time counts.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

import ifcn
from ifcn import atomic
from ifcn.atomic import atomic_path
from ifcn.errors import IfcnError
from ifcn.evaluation.ground_truth import GroundTruth, gt_rle, load_ground_truth
from ifcn.evaluation.readers import ProposalsH5, ResultsJson, open_proposals
from ifcn.evaluation.recall import (
    COCO_AREA_RANGES,
    COCO_IOU_THRESHOLDS,
    CURVE_IOU_THRESHOLDS,
    Pairs,
    average_recall,
    best_recall,
    greedy_recall,
)

AREA_CHOICES = {"coco": list(COCO_AREA_RANGES), "all": ["all"]}


@dataclass
class _PairJob:
    """Per-image IoU work, shared with worker processes (inherited when they fork)."""

    gt: GroundTruth
    source: ProposalsH5 | ResultsJson
    image_ids: list[int]
    gt_offset: np.ndarray
    max_det: int

    def run(self, chunk: range) -> tuple[Pairs, np.ndarray, np.ndarray]:
        """Pairs of the images `chunk` (indices into image_ids), and areas of area-less GTs."""
        detections = self.source.read([self.image_ids[i] for i in chunk])
        parts, unknown_gt, unknown_area = [], [], []
        for i in chunk:
            image_id = self.image_ids[i]
            h, w = self.gt.sizes[image_id]
            objects = self.gt.objects[image_id]
            gt_rles = [gt_rle(s, h, w, ann_id, self.gt.path) for s, _, ann_id in objects]
            for g, (_, area, _) in enumerate(objects):
                if area is None:
                    unknown_gt.append(self.gt_offset[i] + g)
                    unknown_area.append(float(mask_utils.area(gt_rles[g])))
            found = detections.get(image_id)
            if not gt_rles or found is None or not len(found.scores):
                continue
            keys = (-found.scores,) if found.tie is None else (found.tie, -found.scores)
            order = np.lexsort(keys)[: self.max_det]  # stable: COCOeval's mergesort
            size = [h, w]
            counts = found.counts
            dts = [{"size": size, "counts": counts[j]} for j in order.tolist()]
            ious = np.asarray(mask_utils.iou(dts, gt_rles, np.zeros(len(gt_rles), np.uint8)))
            parts.append(Pairs.from_ious(ious.reshape(len(dts), -1), i, int(self.gt_offset[i])))
        return Pairs.concatenate(parts), np.asarray(unknown_gt, int), np.asarray(unknown_area)


_JOB: _PairJob | None = None


def _set_job(job: _PairJob) -> None:
    global _JOB
    _JOB = job


def _run_chunk(chunk: range) -> tuple[Pairs, np.ndarray, np.ndarray]:
    assert _JOB is not None
    return _JOB.run(chunk)


def _pairs(job: _PairJob, workers: int) -> tuple[Pairs, np.ndarray, np.ndarray]:
    n = len(job.image_ids)
    pieces = max(1, min(n, workers * 4))
    bounds = np.linspace(0, n, pieces + 1).astype(int)
    chunks = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if workers <= 1 or len(chunks) <= 1:
        results = [job.run(c) for c in chunks]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with context.Pool(min(workers, len(chunks)), _set_job, (job,)) as pool:
            results = pool.map(_run_chunk, chunks, chunksize=1)
    pairs = Pairs.concatenate([r[0] for r in results])
    gt_index = np.concatenate([r[1] for r in results]) if results else np.zeros(0, int)
    areas = np.concatenate([r[2] for r in results]) if results else np.zeros(0)
    return pairs, gt_index, areas


@dataclass
class Evaluation:
    """Recall figures; -1 marks an area range without any GT, as in COCOeval."""

    matching: str
    max_dets: list[int]
    area_names: list[str]
    recall: np.ndarray  # (T, A, M) at COCO_IOU_THRESHOLDS: COCOeval's eval['recall'][:, 0]
    curve: np.ndarray  # (len(CURVE_IOU_THRESHOLDS), M), area 'all'
    num_images: int
    num_gt: dict[str, int]  # regular (non-crowd, in range) GTs per area range
    num_crowd: int
    images_without_proposals: int
    skipped_images: int
    notes: list[str] = field(default_factory=list)

    @property
    def ar(self) -> np.ndarray:
        """(A, M) average recall over the ten thresholds."""
        return average_recall(self.recall, axis=0)

    def summary(self) -> dict[str, Any]:
        """The figures as JSON-ready values (None where an area range has no GT)."""

        def value(x: float) -> float | None:
            return None if x < 0 else float(x)

        ar = self.ar
        out: dict[str, Any] = {f"AR@{n}": value(ar[0, m]) for m, n in enumerate(self.max_dets)}
        out["matching"] = self.matching
        out["by_area"] = {
            area: {str(n): value(ar[a, m]) for m, n in enumerate(self.max_dets)}
            for a, area in enumerate(self.area_names)
        }
        out["iou_thresholds"] = [round(float(t), 2) for t in COCO_IOU_THRESHOLDS]
        out["recall"] = {
            str(n): [value(r) for r in self.recall[:, 0, m]] for m, n in enumerate(self.max_dets)
        }
        out["recall_by_area"] = {
            area: {
                str(n): [value(r) for r in self.recall[:, a, m]]
                for m, n in enumerate(self.max_dets)
            }
            for a, area in enumerate(self.area_names)
        }
        out["num_images"] = self.num_images
        out["num_gt"] = self.num_gt
        out["num_crowd"] = self.num_crowd
        out["images_without_proposals"] = self.images_without_proposals
        out["skipped_images"] = self.skipped_images
        return out


def evaluate(
    gt_path: str | Path,
    proposals_path: str | Path,
    *,
    max_dets: Sequence[int] = (10, 100, 1000),
    matching: str = "coco",
    first_n: int | None = None,
    area_ranges: str = "coco",
    allow_missing: bool = False,
    workers: int = 1,
) -> Evaluation:
    """AR of the proposals at each N in `max_dets`, by area range, with recall per threshold."""
    if matching not in ("coco", "best"):
        raise IfcnError(f"unknown matching {matching!r} (coco or best)")
    if area_ranges not in AREA_CHOICES:
        raise IfcnError(f"unknown area ranges {area_ranges!r} ({' or '.join(AREA_CHOICES)})")
    max_dets = sorted({int(n) for n in max_dets})
    if not max_dets or max_dets[0] < 1:
        raise IfcnError("--max-dets must be positive integers")
    gt = load_ground_truth(gt_path)
    source = open_proposals(proposals_path, gt)
    image_ids = sorted(gt.sizes)
    if first_n is not None:
        if first_n < 1:
            raise IfcnError("--first-n must be positive")
        image_ids = image_ids[:first_n]
    notes = []
    unknown = sorted(source.image_ids - gt.sizes.keys())
    if unknown:
        listed = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        message = f"proposals for {len(unknown)} image ids that {gt.path} lacks (ids {listed})"
        if not allow_missing:
            raise IfcnError(f"{message}; pass --allow-missing to skip them", source.path)
        notes.append(f"warning: skipped {message}")
    absent = [i for i in image_ids if i not in source.image_ids]
    if absent and isinstance(source, ProposalsH5):
        message = f"no entry for {len(absent)} of the {len(image_ids)} evaluated images"
        if not allow_missing:
            raise IfcnError(f"{message} (e.g. id {absent[0]}); pass --allow-missing", source.path)
        notes.append(f"warning: {message}: counted as images without proposals")

    objects = [gt.objects[i] for i in image_ids]
    gt_offset = np.concatenate([[0], np.cumsum([len(o) for o in objects])]).astype(np.int64)
    gt_area = np.array([a if a is not None else np.nan for o in objects for _, a, _ in o])
    gt_counted = np.array([ann_id != 0 for o in objects for _, _, ann_id in o], dtype=bool)
    job = _PairJob(gt, source, image_ids, gt_offset[:-1], max_dets[-1])
    pairs, area_index, areas = _pairs(job, workers)
    gt_area[area_index] = areas
    if matching == "coco" and not gt_counted.all():
        notes.append(
            f"warning: {int((~gt_counted).sum())} annotations have id 0, which COCOeval never "
            "counts as recalled; --matching coco does the same"
        )

    names = AREA_CHOICES[area_ranges]
    ranges = np.array([COCO_AREA_RANGES[a] for a in names])
    t, a = len(COCO_IOU_THRESHOLDS), len(names)
    thresholds = np.concatenate([np.tile(COCO_IOU_THRESHOLDS, a), CURVE_IOU_THRESHOLDS])
    conditions = np.concatenate(
        [
            np.repeat(ranges, t, axis=0),
            np.tile(COCO_AREA_RANGES["all"], (len(CURVE_IOU_THRESHOLDS), 1)),
        ]
    )
    if matching == "coco":
        recall = greedy_recall(pairs, gt_area, thresholds, conditions, max_dets, gt_counted)
    else:
        recall = best_recall(pairs, gt_area, thresholds, conditions, max_dets)
    lo, hi = ranges[:, 0], ranges[:, 1]
    return Evaluation(
        matching=matching,
        max_dets=max_dets,
        area_names=names,
        recall=recall[: t * a].reshape(a, t, -1).transpose(1, 0, 2),
        curve=recall[t * a :],
        num_images=len(image_ids),
        num_gt={
            name: int(((gt_area >= lo[k]) & (gt_area <= hi[k])).sum())
            for k, name in enumerate(names)
        },
        num_crowd=sum(gt.crowd[i] for i in image_ids),
        images_without_proposals=len(absent),
        skipped_images=len(unknown),
        notes=notes,
    )


def format_table(result: Evaluation) -> str:
    """One screen: AR per area range and N, then recall per IoU threshold (area 'all')."""
    ns = result.max_dets
    head = f"{result.num_images} images, {result.num_gt.get('all', 0)} GT objects"
    lines = [
        f"ifcn evaluate: {head} ({result.num_crowd} crowd ignored), {result.matching} matching",
        "",
        f"{'area':<8}" + "".join(f"{'AR@' + str(n):>10}" for n in ns) + f"{'#GT':>8}",
    ]
    ar = result.ar
    for a, name in enumerate(result.area_names):
        cells = "".join(f"{v:>10.4f}" if v >= 0 else f"{'-':>10}" for v in ar[a])
        lines.append(f"{name:<8}{cells}{result.num_gt[name]:>8}")
    lines += ["", "recall at IoU (all)" + "".join(f"{t:>6.2f}" for t in COCO_IOU_THRESHOLDS)]
    for m, n in enumerate(ns):
        cells = "".join(f"{v:>6.3f}" if v >= 0 else f"{'-':>6}" for v in result.recall[:, 0, m])
        lines.append(f"{'N=' + str(n):<19}{cells}")
    return "\n".join(lines)


def _write_csv(result: Evaluation, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iou"] + [f"recall@{n}" for n in result.max_dets])
        for t, row in zip(CURVE_IOU_THRESHOLDS, result.curve, strict=True):
            writer.writerow([f"{t:.2f}"] + [f"{v:.6f}" if v >= 0 else "" for v in row])


def plot_recall_iou(result: Evaluation, path: Path) -> None:
    """Recall against IoU threshold, one curve per N, AR in the legend (paper Fig. 6/7)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ar = result.ar
    for m, n in enumerate(result.max_dets):
        curve = np.where(result.curve[:, m] >= 0, result.curve[:, m], np.nan)
        label = f"N={n}, AR={ar[0, m]:.3f}" if ar[0, m] >= 0 else f"N={n}"
        ax.plot(CURVE_IOU_THRESHOLDS, curve, label=label)
    ax.set(xlim=(0.5, 1.0), ylim=(0, 1), xlabel="IoU", ylabel="recall")
    ax.set_title(f"Recall vs IoU ({result.matching} matching, {result.num_images} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_outputs(result: Evaluation, out: Path, record: dict[str, Any]) -> dict[str, Path]:
    """ar.json at `out`, recall_iou.csv and recall_iou.png beside it; ar.json is written last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out.parent / "recall_iou.csv", "png": out.parent / "recall_iou.png"}
    with atomic_path(paths["csv"]) as tmp:
        _write_csv(result, tmp)
    with atomic_path(paths["png"]) as tmp:
        plot_recall_iou(result, tmp)
    summary = result.summary()
    summary.update(record)
    summary["outputs"] = {"recall_iou_csv": paths["csv"].name, "recall_iou_png": paths["png"].name}
    summary["ifcn_version"] = ifcn.__version__
    atomic.write_text(out, json.dumps(summary, indent=2) + "\n")
    paths["json"] = out
    return paths
