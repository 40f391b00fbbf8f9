"""Mask Average Recall of proposals (paper §4, DESIGN §8): IoUs per image, then recall.

Mask IoUs are computed with pycocotools per image (in worker processes); the pairs with
IoU >= 0.5 go to `ifcn.evaluation.recall`, which reproduces pycocotools' COCOeval
(iouType='segm', useCats=0) or the best-IoU matching. Detections are ordered as COCOeval orders
them: by score, ties kept in the order COCOeval sees them (grouped by category in the GT's sorted
category order, then file order), and GTs in COCOeval's order (by category, then file order),
because ties in IoU go to the later GT. torch is never imported here: start-up time counts.
"""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

import ifcn
from ifcn.atomic import temporary_path, write_error
from ifcn.data.jsonio import gc_paused
from ifcn.data.rle import RunStats, mask_areas
from ifcn.errors import IfcnError
from ifcn.evaluation.ground_truth import GroundTruth, load_ground_truth
from ifcn.evaluation.readers import ProposalsH5, ResultsJson, open_proposals
from ifcn.evaluation.recall import (
    AREA_CHOICES,
    COCO_AREA_RANGES,
    COCO_IOU_THRESHOLDS,
    CURVE_IOU_THRESHOLDS,
    Pairs,
    average_recall,
    best_hits,
    greedy_hits,
    recall_ratio,
)
from ifcn.pool import Pool
from ifcn.reporting.plots import Plotter, plot_recall_iou
from ifcn.signals import worker_process


@dataclass
class _Job:
    """Per-image work, shared with worker processes (inherited when they fork): read the
    proposals, compute mask IoUs, match them, and count the recalled GTs of the chunk."""

    gt: GroundTruth
    source: ProposalsH5 | ResultsJson
    max_dets: list[int]
    matching: str
    thresholds: np.ndarray  # (C,) the conditions' IoU thresholds
    area_ranges: np.ndarray  # (C, 2) the conditions' area ranges

    def run(self, image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Recalled GTs (C, M) and regular GTs (C,) of the images `image_ids`."""
        with gc_paused():  # a thousand dicts per image would run the cycle collector often
            return self._run(image_ids)

    def _run(self, image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        detections = self.source.read(image_ids)
        parts, areas, counted = [], [], []
        for image_id in image_ids:
            objects = self.gt.objects[image_id]
            gt_rles = self.gt.rles(image_id)
            offset = len(areas)
            for _, area, ann_id in objects:
                areas.append(area)
                counted.append(ann_id != 0)
            found = detections.get(image_id)
            if not gt_rles or found is None or not len(found.scores):
                continue
            size = [*self.gt.sizes[image_id]]
            if found.tie is None:  # proposals.h5: already best first
                counts = found.counts[: self.max_dets[-1]]
                masks = found.masks.take(slice(0, self.max_dets[-1]))
            else:  # COCOeval's order: by score, stably, over results grouped by category
                order = np.lexsort((found.tie, -found.scores))[: self.max_dets[-1]]
                counts = [found.counts[j] for j in order.tolist()]
                masks = found.masks.take(order)
            dts = [{"size": size, "counts": c} for c in counts]
            ious = mask_ious(dts, masks, gt_rles, size[0])
            parts.append(Pairs.from_ious(ious, len(parts), offset))
        pairs = Pairs.concatenate(parts)
        gt_area, gt_counted = np.asarray(areas, np.float64), np.asarray(counted, bool)
        if self.matching == "coco":
            return greedy_hits(
                pairs, gt_area, self.thresholds, self.area_ranges, self.max_dets, gt_counted
            )
        return best_hits(pairs, gt_area, self.thresholds, self.area_ranges, self.max_dets)


def mask_ious(dts: list[dict], masks: RunStats, gts: list[dict], height: int) -> np.ndarray:
    """(D, G) mask IoUs of detections and GTs, as pycocotools computes them, for every pair
    that can reach MIN_IOU; 0 for the others, which never match.

    An IoU I / (A_d + A_g - I) is at least 1/2 only if 3 I >= A_d + A_g, and the intersection I
    is at most either area and the overlap of the GT's box with the detection's columns (from
    its first to its last on pixel, which the readers' run check found): detections without
    such a pair are left out of pycocotools' IoU, about half of its work. The bound holds in
    integers, so no pair of IoU 1/2 or more is left out and the IoUs computed are the same
    bits as over all pairs.
    """
    gt_area = mask_areas(gts)
    x, _, w, h = mask_utils.toBbox(gts).astype(np.int64).T
    first, last = masks.first_on // height, masks.last_on // height + 1  # columns [first, last)
    columns = np.minimum(last[:, None], (x + w)[None]) - np.maximum(first[:, None], x[None])
    reach = np.minimum(np.minimum(masks.area[:, None], gt_area[None]), columns.clip(0) * h[None])
    rows = np.flatnonzero((3 * reach >= masks.area[:, None] + gt_area[None]).any(axis=1))
    ious = np.zeros((len(dts), len(gts)))
    if len(rows):
        some = mask_utils.iou([dts[r] for r in rows.tolist()], gts, np.zeros(len(gts), np.uint8))
        ious[rows] = np.asarray(some).reshape(len(rows), len(gts))
    return ious


_JOB: _Job | None = None


def _set_job(job: _Job) -> None:
    global _JOB
    worker_process()
    _JOB = job


def _run_chunk(image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    assert _JOB is not None
    return _JOB.run(image_ids)


def _count(
    job: _Job, image_ids: list[int], workers: int, meanwhile: Callable[[], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Hits and regular GTs of `job` over `image_ids`, summed over chunks run in `workers`
    processes; `meanwhile` runs in this process while they work."""
    # small chunks, handed out as workers free up: they end within a chunk of each other
    pieces = max(1, min(len(image_ids), workers * 16))
    bounds = np.linspace(0, len(image_ids), pieces + 1).astype(int)
    chunks = [image_ids[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if workers <= 1 or len(chunks) <= 1:
        meanwhile()
        results = [job.run(c) for c in chunks]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with Pool(min(workers, len(chunks)), _set_job, (job,), context=context) as pool:
            pending = pool.map_async(_run_chunk, chunks, chunksize=1)
            meanwhile()
            results = pool.get(pending)
    empty = job.run([])
    hits = sum((r[0] for r in results), start=empty[0])
    regular = sum((r[1] for r in results), start=empty[1])
    return hits, regular


def _hash_input(source: ProposalsH5 | ResultsJson, digests: dict[str, str]) -> None:
    """What the parent does while workers compute IoUs: hash the proposals file."""
    digests[str(source.path)] = source.sha256()


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
    inputs: dict[str, str] = field(default_factory=dict)  # path -> SHA-256 of the file read
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
    settings: Mapping[str, Any],
    *,
    first_n: int | None = None,
    area_ranges: str = "coco",
    allow_missing: bool = False,
    workers: int = 1,
) -> Evaluation:
    """AR of the proposals at each N of ``settings`` (the config's ``evaluate`` section:
    max_dets, matching), by area range, with recall per threshold; only the first ``first_n``
    image ids when given."""
    matching = settings["matching"]
    if area_ranges not in AREA_CHOICES:
        raise IfcnError(f"unknown area ranges {area_ranges!r} ({' or '.join(AREA_CHOICES)})")
    max_dets = sorted({int(n) for n in settings["max_dets"]})
    if workers < 1:
        raise IfcnError(f"--workers must be at least 1, got {workers}")
    gt = load_ground_truth(gt_path)
    source = open_proposals(proposals_path, gt, workers)
    image_ids = sorted(gt.sizes)
    if first_n is not None:
        image_ids = image_ids[:first_n]
    notes = list(source.notes)
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

    objects = sum(len(gt.objects[i]) for i in image_ids)
    empty = sum(gt.empty[i] for i in image_ids)
    if objects and empty == objects:
        raise IfcnError(
            f"every one of the {objects} ground-truth masks of the evaluated images is empty "
            "(no pixel): no proposal can recall any; check the JSON with `ifcn data check`",
            gt.path,
        )
    if empty:
        notes.append(
            f"warning: {empty} of the {objects} ground-truth masks are empty (no pixel): "
            "counted as objects, as COCOeval counts them, though no proposal can recall them"
        )
    uncounted = sum(ann_id == 0 for i in image_ids for _, _, ann_id in gt.objects[i])
    if matching == "coco" and uncounted:
        notes.append(
            f"warning: {uncounted} annotations have id 0, which COCOeval never "
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
    job = _Job(gt, source, max_dets, matching, thresholds, conditions)
    if isinstance(source, ProposalsH5):
        image_ids_in_file_order = source.file_order(image_ids)
    else:
        image_ids_in_file_order = image_ids
    digests = {str(gt.path): gt.sha256}
    try:
        hits, regular = _count(
            job, image_ids_in_file_order, workers, lambda: _hash_input(source, digests)
        )
    finally:
        if isinstance(source, ProposalsH5):
            source.close()
    recall = recall_ratio(hits, regular)
    return Evaluation(
        matching=matching,
        max_dets=max_dets,
        area_names=names,
        recall=recall[: t * a].reshape(a, t, -1).transpose(1, 0, 2),
        curve=recall[t * a :],
        num_images=len(image_ids),
        num_gt={name: int(regular[k * t]) for k, name in enumerate(names)},
        num_crowd=sum(gt.crowd[i] for i in image_ids),
        images_without_proposals=len(absent),
        skipped_images=len(unknown),
        inputs=digests,
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


def output_paths(out: Path) -> dict[str, Path]:
    """What `ifcn evaluate --out out` writes: the recall curve named after `out`, beside it
    (ar.json: ar.recall_iou.csv and ar.recall_iou.png), so that evaluations sharing a folder
    keep their own curves; `out` itself (the figures) last."""
    out = Path(out)
    stem = out.stem if out.suffix else out.name
    return {
        "csv": out.with_name(f"{stem}.recall_iou.csv"),
        "png": out.with_name(f"{stem}.recall_iou.png"),
        "json": out,
    }


def write_outputs(
    result: Evaluation, out: Path, record: dict[str, Any], plotter: Plotter | None = None
) -> dict[str, Path]:
    """ar.json at `out` and the recall curve beside it (`output_paths`), all or none: each is
    written to a temporary file and they are renamed into place together at the end, ar.json
    last; a failure on the way (a full disk) removes the temporaries and any of the set
    already renamed. The figure is drawn by `plotter` if given."""
    paths = output_paths(out)
    temporaries: dict[str, Path] = {}
    created: list[Path] = []  # every temporary, named before it exists
    try:
        for key, path in paths.items():
            temporaries[key] = temporary_path(path, created)
        try:
            _write_csv(result, temporaries["csv"])
        except OSError as exc:
            raise write_error(exc, paths["csv"]) from None
        ar = result.ar
        figure = (
            CURVE_IOU_THRESHOLDS,
            {n: result.curve[:, m] for m, n in enumerate(result.max_dets)},
            {n: float(ar[0, m]) for m, n in enumerate(result.max_dets)},
            f"Recall vs IoU ({result.matching} matching, {result.num_images} images)",
            temporaries["png"],
        )
        try:
            if plotter is not None:
                plotter.draw(plot_recall_iou, *figure)
            else:
                plot_recall_iou(*figure)
        except IfcnError as exc:  # it names the temporary file: name the output instead
            message = str(exc).replace(str(temporaries["png"]), str(paths["png"]))
            raise IfcnError(message) from None
        summary = result.summary()
        summary.update(record)
        summary["outputs"] = {"recall_iou_csv": paths["csv"].name,
                              "recall_iou_png": paths["png"].name}  # fmt: skip
        summary["ifcn_version"] = ifcn.__version__
        try:
            temporaries["json"].write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as exc:
            raise write_error(exc, paths["json"]) from None
        _rename_together(temporaries, paths)
    finally:
        for tmp in created:
            tmp.unlink(missing_ok=True)
    return paths


def _rename_together(temporaries: dict[str, Path], paths: dict[str, Path]) -> None:
    """Rename each temporary onto its path, in order; if one fails, remove the whole set."""
    for key, path in paths.items():
        try:
            os.replace(temporaries[key], path)
        except OSError as exc:
            for done in paths.values():
                with contextlib.suppress(OSError):
                    done.unlink(missing_ok=True)
            raise write_error(exc, path) from None
