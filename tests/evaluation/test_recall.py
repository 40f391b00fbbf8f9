"""`greedy_hits` against COCOeval's matching loop written out plainly, on pair lists with many
detections that overlap several GTs, IoU ties, and maxDets boundaries between them."""

from __future__ import annotations

import numpy as np
import pytest

from ifcn.evaluation.recall import COCO_AREA_RANGES, COCO_IOU_THRESHOLDS, Pairs, greedy_hits


def cocoeval_hits(ious, gt_area, gt_counted, thresholds, area_ranges, max_dets):
    """Recalled GTs per condition and N: COCOeval's evaluateImg loop over detections in rank
    order, per image, with out-of-range GTs ignored (sorted last) and crowd GTs absent."""
    hits = np.zeros((len(thresholds), len(max_dets)), np.int64)
    for c, (t, (lo, hi)) in enumerate(zip(thresholds, area_ranges, strict=True)):
        for m, n in enumerate(max_dets):
            for image_ious, offset in ious:
                g_ids = np.arange(image_ious.shape[1]) + offset
                regular = (gt_area[g_ids] >= lo) & (gt_area[g_ids] <= hi)
                order = np.argsort(~regular, kind="stable")  # regular GTs first, as COCOeval
                taken = np.zeros(len(order), bool)
                for d in range(min(n, image_ious.shape[0])):
                    best, pick = min(t, 1 - 1e-10), -1
                    for k, g in enumerate(order):
                        if taken[k]:
                            continue
                        if pick > -1 and regular[order[pick]] and not regular[g]:
                            break
                        if image_ious[d, g] < best:
                            continue
                        best, pick = image_ious[d, g], k
                    if pick > -1:
                        taken[pick] = True
                        g = order[pick]
                        hits[c, m] += regular[g] and gt_counted[g + offset]
    return hits


def random_pairs(seed: int):
    """Images whose GTs overlap so that some detections have IoU >= 0.5 with several GTs."""
    rng = np.random.default_rng(seed)
    ious, parts, offset = [], [], 0
    for image in range(6):
        n_gt, n_dt = int(rng.integers(1, 6)), int(rng.integers(0, 40))
        values = [0.0, 0.5, 0.55, 0.7, 0.9, 1.0, rng.random()]
        chance = [0.7] + [0.05] * 6  # most detections overlap one GT, some several
        matrix = rng.choice(values, (n_dt, n_gt), p=chance)
        ious.append((matrix, offset))
        parts.append(Pairs.from_ious(matrix, image, offset))
        offset += n_gt
    gt_area = rng.choice([100.0, 32.0**2, 2000.0, 96.0**2, 20000.0], offset)
    gt_counted = rng.random(offset) > 0.1
    return ious, Pairs.concatenate(parts), gt_area, gt_counted


@pytest.mark.parametrize("seed", range(8))
def test_greedy_hits_equal_cocoevals_loop(seed):
    ious, pairs, gt_area, gt_counted = random_pairs(seed)
    per_detection = np.concatenate([np.sum(m >= 0.5, axis=1) for m, _ in ious])
    assert (per_detection == 1).sum() >= 20 and (per_detection > 1).sum() >= 10
    ranges = np.array(list(COCO_AREA_RANGES.values()))
    thresholds = np.tile(COCO_IOU_THRESHOLDS, len(ranges))
    area_ranges = np.repeat(ranges, len(COCO_IOU_THRESHOLDS), axis=0)
    max_dets = [1, 3, 10, 20, 100]
    hits, regular = greedy_hits(pairs, gt_area, thresholds, area_ranges, max_dets, gt_counted)
    expected = cocoeval_hits(ious, gt_area, gt_counted, thresholds, area_ranges, max_dets)
    np.testing.assert_array_equal(hits, expected)
    inside = (gt_area >= area_ranges[:, :1]) & (gt_area <= area_ranges[:, 1:])
    np.testing.assert_array_equal(regular, inside.sum(axis=1))
