"""RoI labelling (mask IoU ≥ 0.5 → class, [0.1, 0.5) → background) and 1:3 sampling."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from ifcn.classify.targets import IGNORE, label_rois, rle_boxes, sample_rois

H, W = 40, 100


def _rle(x0: int, x1: int, y0: int = 0, y1: int = 20) -> dict:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask_utils.encode(np.asfortranarray(mask))


def test_labels_follow_the_mask_iou_with_the_best_gt():
    gts = [_rle(0, 20), _rle(50, 70)]
    rois = [
        _rle(0, 20),  # IoU 1 with GT 0
        _rle(52, 70),  # IoU 0.9 with GT 1
        _rle(0, 10),  # IoU 0.5 exactly: foreground
        _rle(0, 8),  # IoU 0.4: background
        _rle(18, 40),  # IoU 2/40 = 0.05: not used
        _rle(80, 100),  # touches nothing: not used
    ]
    labels = label_rois(rois, gts, np.array([3, 1]))
    assert labels.tolist() == [3, 1, 3, 0, IGNORE, IGNORE]
    assert label_rois(rois, gts, np.array([3, 1]), bg_iou_low=0.0)[4:].tolist() == [0, 0]


def test_background_inside_a_crowd_region_is_not_used():
    gts = [_rle(0, 20)]
    rois = [_rle(0, 8), _rle(0, 8, 20, 40)]  # both IoU 0.4 with the GT; the 2nd inside the crowd
    labels = label_rois(rois, gts, np.array([2]), crowd_rles=[_rle(0, 30, 20, 40)])
    assert labels.tolist() == [0, IGNORE]


def test_no_gt_means_no_foreground_and_nothing_to_learn_from():
    assert label_rois([_rle(0, 20)], [], np.zeros(0, int)).tolist() == [IGNORE]
    assert label_rois([], [_rle(0, 20)], np.array([1])).shape == (0,)


def test_sampling_keeps_at_most_a_quarter_foreground():
    labels = np.array([1] * 30 + [0] * 100 + [IGNORE] * 10)
    rng = np.random.default_rng(0)
    keep = sample_rois(labels, 64, 0.25, rng)
    assert len(keep) == 64 and len(set(keep.tolist())) == 64
    assert (labels[keep] > 0).sum() == 16 and (labels[keep] == 0).sum() == 48
    few = sample_rois(np.array([2, 2, 0, IGNORE]), 64, 0.25, rng)
    assert sorted(few.tolist()) == [0, 1, 2]
    again = sample_rois(labels, 64, 0.25, np.random.default_rng(0))
    assert np.array_equal(keep, again)


def test_boxes_of_rles_are_tight_with_exclusive_ends():
    assert rle_boxes([_rle(5, 20, 3, 9)]).tolist() == [[5, 3, 20, 9]]
    assert rle_boxes([]).shape == (0, 4)
