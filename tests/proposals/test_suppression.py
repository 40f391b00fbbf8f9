"""NMS stage (DESIGN §6): masks resized onto the original image, the 0.8 box-IoU rule, top N,
COCO RLE at image resolution."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from ifcn.data.masks import mask_boxes
from ifcn.proposals.candidates import CandidateWriter
from ifcn.proposals.format import Proposals
from ifcn.proposals.resample import masks_to_image, render, tight_boxes
from ifcn.proposals.suppression import nms_image, run_nms
from ifcn.windows import window_boxes
from tests.configs import settings
from tests.proposals.hand import (
    HandCandidates,
    candidate_attrs,
    score_map_candidates,
)


def _candidates(masks, boxes, logits, scale=None, height=120, width=120) -> HandCandidates:
    n = len(logits)
    return HandCandidates(
        image_id=1, file_name="a.png", height=height, width=width,
        masks=np.asarray(masks, np.float16), boxes=np.asarray(boxes, np.float32),
        objectness=np.asarray(logits, np.float32),
        scale=np.zeros(n, np.int8) if scale is None else np.asarray(scale, np.int8),
    )  # fmt: skip


def _decode(result: dict) -> np.ndarray:
    size = [result["height"], result["width"]]
    if not result["rles"]:
        return np.zeros((0, *size), np.uint8)
    return mask_utils.decode([{"size": size, "counts": c} for c in result["rles"]]).transpose(
        2, 0, 1
    )


def test_box_iou_085_is_suppressed_and_070_is_kept():
    full = np.ones((3, 4, 4))
    boxes = [[0, 0, 100, 100], [0, 0, 100, 85], [0, 0, 100, 70]]  # IoU with the first: .85, .70
    for order in ([0, 1, 2], [2, 0, 1]):
        logits = np.array([3.0, 2.0, 1.0])
        record = _candidates(full[order], np.array(boxes)[order], logits[order])
        result = nms_image(record, settings("nms", iou=0.8, top_n=10))
        np.testing.assert_array_equal(result["boxes"], [[0, 0, 100, 100], [0, 0, 100, 70]])
        np.testing.assert_allclose(result["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])))
    # with a threshold above 0.85 nothing is suppressed
    assert (
        len(nms_image(_candidates(full, boxes, [3, 2, 1]), settings("nms", iou=0.9))["rles"]) == 3
    )


def test_nms_uses_the_tight_box_of_the_binary_mask_not_the_window():
    # identical windows whose masks cover different halves: boxes do not overlap, both kept
    left, right = np.zeros((4, 4)), np.zeros((4, 4))
    left[:, :2], right[:, 2:] = 1, 1
    record = _candidates([left, right], [[0, 0, 80, 80]] * 2, [2.0, 1.0])
    result = nms_image(record, settings("nms", iou=0.8))
    np.testing.assert_array_equal(result["boxes"], [[0, 0, 40, 80], [40, 0, 80, 80]])


def test_empty_masks_are_dropped_and_top_n_keeps_the_best():
    masks = np.zeros((6, 4, 4))
    masks[1:] = 1
    boxes = [[i * 20, 0, i * 20 + 16, 16] for i in range(6)]  # disjoint windows
    result = nms_image(_candidates(masks, boxes, [9, 5, 4, 3, 2, 1]), settings("nms", top_n=3))
    np.testing.assert_array_equal(result["boxes"][:, 0], [20, 40, 60])
    assert (np.diff(result["scores"]) <= 0).all() and len(result["rles"]) == 3
    none = nms_image(_candidates(np.zeros((2, 4, 4)), boxes[:2], [1, 2]), settings("nms"))
    assert none["rles"] == [] and none["boxes"].shape == (0, 4) and none["scales"].shape == (0,)


@pytest.mark.parametrize("scale", [0.5, 1.3, 2.0])
def test_masks_of_each_scale_land_on_the_right_pixels(scale):
    m = 6
    band = np.zeros((m, m))
    band[:, 2:4] = 1  # a vertical band: mask columns 2 and 3, every row
    tops = torch.tensor([[1, 2], [-2, -1]])  # the second window hangs over the top-left corner
    boxes = window_boxes(tops, m, scale)
    height, width = 90, 110
    found = masks_to_image(np.stack([band, band]), boxes.numpy(), height, width)
    centres_y, centres_x = np.arange(height) + 0.5, np.arange(width) + 0.5
    for mask, (y0, x0) in zip(found, tops.tolist(), strict=True):
        # resized pixels: window rows [8·y0, 8·(y0+m)), band columns 8·(x0+2) .. 8·(x0+4)
        rows = (centres_y >= 8 * y0 / scale) & (centres_y < 8 * (y0 + m) / scale)
        cols = (centres_x > 8 * (x0 + 2) / scale) & (centres_x < 8 * (x0 + 4) / scale)
        np.testing.assert_array_equal(mask, rows[:, None] & cols[None, :])


def test_resizing_matches_cv2_on_a_pixel_aligned_window():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 21, 21)).astype(np.float32)
    found = masks_to_image(masks, np.array([[10.0, 20.0, 178.0, 188.0]] * 3), 200, 190)
    for mask, probs in zip(found, masks, strict=True):
        expected = cv2.resize(probs, (168, 168), interpolation=cv2.INTER_LINEAR) > 0.5
        np.testing.assert_array_equal(mask[20:188, 10:178], expected)
        assert mask.sum() == expected[:, :180].sum()  # clipped at the image's right edge


def test_tight_boxes_and_rles_agree_with_the_full_resolution_masks():
    rng = np.random.default_rng(1)
    n, height, width = 60, 70, 90
    masks = (rng.random((n, 7, 7)) ** 4).astype(np.float32)
    masks[:5] = 1.0  # full windows, some touching the image's last row and column
    corner = rng.uniform(-30, 80, (n, 2))
    side = rng.uniform(5, 70, (n, 1))
    boxes = np.concatenate([corner, corner + side], 1)
    full = masks_to_image(masks, boxes, height, width)
    expected = mask_boxes(full)
    expected[full.reshape(n, -1).sum(1) == 0] = 0
    np.testing.assert_array_equal(tight_boxes(masks, boxes, height, width), expected)
    rles, final = render(masks, boxes, height, width)
    decoded = mask_utils.decode([{"size": [height, width], "counts": c} for c in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), full)
    np.testing.assert_array_equal(final, expected)


def test_run_nms_with_workers_writes_the_same_file_as_one_process(tmp_path):
    path = tmp_path / "candidates.h5"
    with CandidateWriter(path, candidate_attrs()) as writer:
        for image_id in (4, 2, 9):
            writer.add(score_map_candidates(image_id, 40))
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    run_nms(path, one, settings("nms", top_n=8), workers=1, show_progress=False)
    run_nms(path, two, settings("nms", top_n=8), workers=2, show_progress=False)
    with Proposals(one) as a, Proposals(two) as b:
        assert a.image_ids.tolist() == b.image_ids.tolist() == [4, 2, 9]
        assert a.attrs["nms_iou"] == 0.8 and a.attrs["scales"] == [30, 54]
        for image_id in (4, 2, 9):
            x, y = a.get(image_id), b.get(image_id)
            assert 0 < len(x) <= 8 and x.rles == y.rles
            np.testing.assert_array_equal(x.scores, y.scores)
            np.testing.assert_array_equal(x.boxes, y.boxes)
            np.testing.assert_array_equal(x.scales, y.scales)
