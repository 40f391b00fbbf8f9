"""Recall of proposals at IoU thresholds: COCOeval's greedy matching and the best-IoU matching.

Both work on the sparse list of (detection, GT) pairs whose mask IoU is at least 0.5, pooled over
all images: a pair below 0.5 can never match at a threshold of 0.5 or more, so it is dropped
before matching. GT indices are global (images' GTs laid end to end) and each image's GTs keep
COCOeval's order, which decides ties.

`greedy_hits` is COCOeval's `evaluateImg` + `accumulate` (iouType='segm', useCats=0) restricted
to what recall depends on. In COCOeval a detection takes, among the GTs not yet taken and not
ignored, the one of highest IoU >= min(t, 1 - 1e-10) (the last such in GT order on ties); only if
there is none may it take an ignored GT (crowd or outside the area range), which never changes
which regular GTs are free. Recall is then (regular GTs taken) / (regular GTs). The matching is
sequential only in detection rank, and the figures at maxDets N are those of the first N ranks,
so one pass over rank, vectorised over images x conditions, gives every N at once. A condition is
a (threshold, area range) pair; crowd GTs are not passed in at all, since they are always ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# COCOeval's thresholds, built exactly as pycocotools' Params does (np.arange drifts).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
# Recall-vs-IoU curve of the paper's Fig. 6/7.
CURVE_IOU_THRESHOLDS = np.linspace(0.5, 1.0, 51)
# COCOeval's areaRng: GT area (the annotation's `area`) within [lo, hi], both ends inclusive.
COCO_AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
# what `--area-ranges` may name: the area ranges each choice reports
AREA_CHOICES = {"coco": list(COCO_AREA_RANGES), "all": ["all"]}
MIN_IOU = 0.5  # pairs below this are never needed


@dataclass(frozen=True)
class Pairs:
    """Detection-GT pairs with IoU >= 0.5; `rank` is the detection's rank in its image."""

    image: np.ndarray  # (p,) int64, index of the image
    rank: np.ndarray  # (p,) int64, 0 = the image's best-scored detection
    gt: np.ndarray  # (p,) int64, global GT index
    iou: np.ndarray  # (p,) float64

    @classmethod
    def concatenate(cls, parts: list[Pairs]) -> Pairs:
        if not parts:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, np.zeros(0))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__annotations__))

    @classmethod
    def from_ious(cls, ious: np.ndarray, image: int, gt_offset: int) -> Pairs:
        """The pairs of one image's (detections x GTs) IoU matrix."""
        rank, gt = np.nonzero(ious >= MIN_IOU)
        return cls(np.full(len(rank), image, np.int64), rank, gt + gt_offset, ious[rank, gt])


def _effective(thresholds: np.ndarray) -> np.ndarray:
    # COCOeval: iou = min([t, 1 - 1e-10]), so a perfect mask counts at t = 1.
    return np.minimum(np.asarray(thresholds, dtype=np.float64), 1 - 1e-10)


def _regular(gt_area: np.ndarray, area_ranges: np.ndarray) -> np.ndarray:
    """(C, G) True where GT g is a regular (not ignored) GT under condition c's area range."""
    lo, hi = np.asarray(area_ranges, dtype=np.float64).T
    return (gt_area[None, :] >= lo[:, None]) & (gt_area[None, :] <= hi[:, None])


def recall_ratio(hits: np.ndarray, regular: np.ndarray) -> np.ndarray:
    """(C, M) recall from hit counts (C, M) and regular GT counts (C,); -1 where there is no
    regular GT (COCOeval's marker)."""
    regular = np.asarray(regular)[:, None]
    return np.where(regular > 0, hits / np.maximum(regular, 1), -1.0)


def greedy_hits(
    pairs: Pairs,
    gt_area: np.ndarray,
    thresholds: np.ndarray,
    area_ranges: np.ndarray,
    max_dets: list[int],
    gt_counted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Recalled GTs (C, M) and regular GTs (C,) of COCOeval's greedy matching, for C conditions
    and M values of maxDets; counts, so that the figures of separate image sets add up.

    `thresholds` (C,) and `area_ranges` (C, 2) give the conditions; `gt_area` (G,) the area of
    every non-crowd GT. `gt_counted` (G,) False marks GTs that are matched but never counted as
    recalled: COCOeval stores the matched GT's id in dtMatches and reads 0 as "no match", so a GT
    whose annotation id is 0 is never recalled there.
    """
    gt_area = np.asarray(gt_area, dtype=np.float64)
    thr = _effective(thresholds)
    regular = _regular(gt_area, area_ranges)
    counted = regular if gt_counted is None else regular & np.asarray(gt_counted, bool)[None]
    free = regular.copy()  # regular and not yet taken
    max_dets = sorted(max_dets)
    hits = np.zeros((len(thr), len(max_dets)), np.int64)

    # Order pairs by rank; within a rank, detections with a single pair first (most of them:
    # they need no choice), then the others by image, each detection's pairs by (IoU, GT index)
    # ascending, so that COCOeval's pick (highest IoU, the last GT on ties) is the last eligible
    # pair of its run. A run is one detection's pairs; a step is one rank's runs, all in
    # different images, so the runs of a step never compete for a GT.
    first = np.lexsort((pairs.gt, pairs.iou, pairs.image, pairs.rank))
    rank, image = pairs.rank[first], pairs.image[first]
    run_length = np.diff(np.append(_starts(rank, image), len(rank)))
    shared = np.repeat(run_length > 1, run_length)
    regroup = np.lexsort((np.arange(len(first)), shared, rank))
    order, shared = first[regroup], shared[regroup]
    rank, image, gt = pairs.rank[order], pairs.image[order], pairs.gt[order]
    eligible_at = pairs.iou[order][None, :] >= thr[:, None]  # (C, pairs)
    run_start = _starts(rank, image)
    step_start = np.flatnonzero(np.diff(rank, prepend=-1))
    bounds = np.append(step_start, len(rank))
    singles = step_start + np.add.reduceat(~shared, step_start) if len(rank) else step_start
    # A detection with one pair takes its GT if eligible and free, so whether a GT is taken
    # after any number of such detections does not depend on their order: those of all the
    # steps up to a step with other runs (or up to a maxDets boundary) are applied at once.
    choosing = np.flatnonzero(singles < bounds[1:]).tolist()
    ends = bounds[np.searchsorted(rank[step_start], max_dets)].tolist()  # pairs of rank < N

    def take_singles(a: int, c: int) -> None:
        if c > a:
            g = gt[a:c]
            cond, pair = np.nonzero(free[:, g] & eligible_at[:, a:c])
            free[cond, g[pair]] = False

    done = 0  # pairs before this one are applied
    next_choosing = 0
    for m, end in enumerate(ends):
        while next_choosing < len(choosing) and bounds[choosing[next_choosing]] < end:
            s = choosing[next_choosing]
            c, b = int(singles[s]), int(bounds[s + 1])
            take_singles(done, c)
            # the others take their last eligible pair
            runs = run_start[np.searchsorted(run_start, c) : np.searchsorted(run_start, b)]
            g = gt[c:b]
            eligible = free[:, g] & eligible_at[:, c:b]
            index = np.where(eligible, np.arange(b - c), -1)
            last = np.maximum.reduceat(index, runs - c, axis=1)
            cond, run = np.nonzero(last >= 0)
            free[cond, g[last[cond, run]]] = False
            done = b
            next_choosing += 1
        take_singles(done, end)
        done = end
        hits[:, m] = (counted & ~free).sum(axis=1)
    return hits, regular.sum(axis=1)


def _starts(rank: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Where a new (rank, image) begins in arrays sorted by rank."""
    return np.flatnonzero((np.diff(rank, prepend=-1) != 0) | (np.diff(image, prepend=-1) != 0))


def best_hits(
    pairs: Pairs,
    gt_area: np.ndarray,
    thresholds: np.ndarray,
    area_ranges: np.ndarray,
    max_dets: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Recalled GTs (C, M) and regular GTs (C,) when each GT takes its best IoU among the top N
    (Hosang et al.)."""
    gt_area = np.asarray(gt_area, dtype=np.float64)
    thr = _effective(thresholds)
    regular = _regular(gt_area, area_ranges)
    max_dets = sorted(max_dets)
    hits = np.zeros((len(thr), len(max_dets)), np.int64)
    for m, n in enumerate(max_dets):
        top = pairs.rank < n
        best = np.zeros(len(gt_area))
        np.maximum.at(best, pairs.gt[top], pairs.iou[top])
        hits[:, m] = (regular & (best[None, :] >= thr[:, None])).sum(axis=1)
    return hits, regular.sum(axis=1)


def average_recall(recall: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over thresholds ignoring COCOeval's -1 (no GT), computed as its summarize() does
    (np.mean of the valid entries), so that figures agree to the last bit; -1 if none is valid."""
    moved = np.moveaxis(np.asarray(recall, dtype=np.float64), axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    out = np.array([np.mean(r[r > -1]) if (r > -1).any() else -1.0 for r in flat])
    return out.reshape(moved.shape[:-1])
