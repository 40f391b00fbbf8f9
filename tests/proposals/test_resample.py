"""The fast NMS gives exactly the proposals of the reference implementation (the dense weight
matrix products of ifcn 0.1), and score-map candidates give the same AR as assembled masks."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ifcn.assemble import assemble_sparse
from ifcn.data.image import image_tensor, resize_image
from ifcn.proposals.candidates import ImageCandidates
from ifcn.proposals.inference import infer_image
from ifcn.proposals.resample import masks_to_image, render, tight_boxes
from ifcn.proposals.suppression import nms_image
from ifcn.windows import rank_windows, window_boxes
from tests.configs import settings
from tests.proposals import reference_nms
from tests.proposals.hand import HandCandidates, OracleFCN


def _windows(rng, n, side, height, width, kind):
    masks = {
        "uniform": lambda: rng.random((n, side, side)),
        "saturated": lambda: rng.random((n, side, side)) ** 4,
        "ties": lambda: np.round(rng.random((n, side, side)) * 4) / 4,  # values exactly 0.5
        "near": lambda: 0.5 + (rng.random((n, side, side)) - 0.5) * 1e-3,
    }[kind]().astype(np.float16)
    corner = rng.uniform(-60, max(height, width), (n, 2))
    size = rng.uniform(2, 2 * max(height, width), (n, 1))  # smaller and larger than the mask
    return masks, np.concatenate([corner, corner + size], 1)


@pytest.mark.parametrize("side", [3, 5, 21, 56])
@pytest.mark.parametrize("kind", ["uniform", "saturated", "ties", "near"])
@pytest.mark.parametrize("threshold", [0.5, 0.0, 0.3, 1.0])
def test_masks_and_boxes_equal_the_reference_bit_for_bit(side, kind, threshold):
    rng = np.random.default_rng(side * 100 + len(kind) * 10 + int(threshold * 10))
    height, width = int(rng.integers(30, 160)), int(rng.integers(30, 160))
    masks, boxes = _windows(rng, 120, side, height, width, kind)
    as_torch = torch.from_numpy(masks).float(), torch.from_numpy(boxes)
    expected_boxes = reference_nms.tight_boxes(*as_torch, height, width, threshold).numpy()
    np.testing.assert_array_equal(tight_boxes(masks, boxes, height, width, threshold),
                                  expected_boxes)  # fmt: skip
    rles, final = render(masks, boxes, height, width, threshold)
    expected_rles, expected_final = reference_nms.render_kept(*as_torch, height, width, threshold)
    assert rles == expected_rles
    np.testing.assert_array_equal(final, expected_final.numpy())
    np.testing.assert_array_equal(
        masks_to_image(masks, boxes, height, width, threshold),
        reference_nms.masks_to_image(*as_torch, height, width, threshold),
    )


def _smooth_maps(rng: np.random.Generator, channels: int, h: int, w: int, amplitude: float):
    low = torch.from_numpy(rng.normal(size=(1, channels, h // 4 + 2, w // 4 + 2))).float()
    up = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return up[0] * amplitude


class RandomMaps(torch.nn.Module):
    """Smooth random score maps and objectness at any input size (the post-processing bench's)."""

    def __init__(self, k: int, seed: int):
        super().__init__()
        self.k, self.rng = k, np.random.default_rng(seed)

    def forward(self, images):
        h, w = -(-images.shape[2] // 8), -(-images.shape[3] // 8)
        return {
            "scores": _smooth_maps(self.rng, self.k * self.k, h, w, 4.0)[None],
            "objectness": _smooth_maps(self.rng, 1, h, w, 3.0)[None],
        }


def test_nms_of_score_map_candidates_equals_the_reference_on_their_masks():
    image = np.zeros((150, 200, 3), np.uint8)
    found = infer_image(RandomMaps(5, 0), image, [80, 150, 240], 21, 5, 400, 300)
    record = ImageCandidates(1, "a.png", 150, 200, **found)
    result = nms_image(record, settings("nms", iou=0.8, top_n=300))
    expected = reference_nms.nms_image(record, iou=0.8, top_n=300)
    assert len(result["rles"]) > 50 and result["rles"] == expected["rles"]
    for key in ("scores", "boxes", "scales"):
        np.testing.assert_array_equal(result[key], expected[key])


def _old_candidates(model, image, scales, m, k, topk) -> HandCandidates:
    """Candidates as ifcn 0.1 stored them: masks assembled from float32 logits, in float16."""
    masks, boxes, logits, index = [], [], [], []
    with torch.no_grad():
        for n, side in enumerate(scales):
            resized, factor = resize_image(image, side)
            out = model(image_tensor(resized))
            tops, best = rank_windows(out["objectness"][0, 0], m, topk)
            chosen = assemble_sparse(out["scores"][0], tops, m, fill=float("-inf")).sigmoid()
            masks.append(chosen.half().numpy())
            boxes.append(window_boxes(tops, m, factor).numpy())
            logits.append(best.numpy())
            index.append(np.full(len(tops), n, np.int8))
    return HandCandidates(
        0,
        "",
        image.shape[0],
        image.shape[1],
        np.concatenate(masks),
        np.concatenate(boxes),
        np.concatenate(logits),
        np.concatenate(index),
    )


class NoisyOracle(OracleFCN):
    """The oracle's score maps with noise, so that masks have soft, uncertain edges."""

    def forward(self, images):
        out = super().forward(images)
        generator = torch.Generator().manual_seed(images.shape[2])
        out["scores"] = out["scores"] * 0.3 + torch.randn(out["scores"].shape, generator=generator)
        return out


def _average_recall(gt: dict, results: list[dict]) -> np.ndarray:
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "segm")
        evaluation.params.useCats = 0
        evaluation.params.maxDets = [10, 100]
        evaluation.evaluate()
        evaluation.accumulate()
    recall = evaluation.eval["recall"][:, 0, 0, :]  # IoU thresholds × N, all areas
    return np.where(recall < 0, 0, recall).mean(axis=0)


def test_score_map_candidates_give_the_ar_of_stored_masks_up_to_float16_rounding():
    rng = np.random.default_rng(0)
    scales, m, k = [96, 144, 192], 21, 5
    images, annotations, old, new = [], [], [], []
    for image_id in range(1, 5):
        masks = np.zeros((3, 192, 256), np.uint8)
        for mask in masks:
            y, x = rng.integers(16, 120), rng.integers(16, 180)
            mask[y : y + rng.integers(40, 70), x : x + rng.integers(40, 70)] = 1
        masks[1] &= ~masks[0]
        masks[2] &= ~(masks[0] | masks[1])
        images.append({"id": image_id, "height": 192, "width": 256, "file_name": ""})
        for mask in masks:
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": 1, "segmentation": rle,
                                "area": float(mask.sum()),
                                "bbox": list(mask_utils.toBbox(rle))})  # fmt: skip
        model, image = NoisyOracle(masks), np.zeros((192, 256, 3), np.uint8)
        before = _old_candidates(model, image, scales, m, k, 200)
        after = ImageCandidates(image_id, "", 192, 256,
                                **infer_image(model, image, scales, m, k, None, 200))  # fmt: skip
        for found, out in ((reference_nms.nms_image(before, 0.8, 100), old),
                           (nms_image(after, settings("nms", top_n=100)), new)):  # fmt: skip
            out += [{"image_id": image_id, "category_id": 1, "score": float(s),
                     "segmentation": {"size": [192, 256], "counts": c.decode()}}
                    for c, s in zip(found["rles"], found["scores"], strict=True)]  # fmt: skip
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}
    ar_old, ar_new = _average_recall(gt, old), _average_recall(gt, new)
    assert ar_old[1] > 0.3  # a case where recall means something
    np.testing.assert_allclose(ar_new, ar_old, atol=1e-3)
