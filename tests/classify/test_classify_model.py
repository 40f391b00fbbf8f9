"""The classifier network: RoI masking, mask grids on the RoIAlign grid, backbone weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from ifcn.checkpoint import save_atomic
from ifcn.classify.model import (
    ProposalClassifier,
    build_classifier,
    load_backbone_from,
    mask_grids,
    roi_inputs,
)
from ifcn.config import validate_config
from ifcn.errors import IfcnError
from ifcn.model import build_model
from ifcn.model.backbone import TinyBackbone


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _config(**classify) -> dict:
    return validate_config({"classify": {"fc_dim": 16, **classify}})


def test_roi_masking_zeroes_features_outside_the_mask():
    model = ProposalClassifier(TinyBackbone(width=16), num_classes=3, pool_size=4, fc_dim=8)
    features = torch.rand(1, 16, 10, 12) + 0.5  # no zeros of its own
    rois = torch.tensor([[0.0, 8.0, 8.0, 72.0, 64.0], [0.0, 0.0, 0.0, 96.0, 80.0]])
    grids = torch.zeros(2, 4, 4)
    grids[0, :, :2] = 1  # left half of the first RoI
    grids[1, 1:3, 1:3] = 1  # centre of the second
    boxed, masked = model.roi_features(features, rois, grids)
    assert boxed.shape == masked.shape == (2, 16, 4, 4)
    inside = grids[:, None].expand_as(boxed).bool()
    assert (masked[~inside] == 0).all()
    assert torch.equal(masked[inside], boxed[inside]) and (boxed > 0).all()


def test_mask_grid_is_the_mask_resized_to_the_roi_grid():
    mask = np.zeros((60, 80), np.uint8)
    mask[10:50, 20:40] = 1  # the left half of the box below
    box = np.array([[20, 10, 60, 50]], np.float32)
    grid = mask_grids([_rle(mask)], box, 4)[0]
    expected = torch.zeros(4, 4)
    expected[:, :2] = 1
    assert torch.equal(grid, expected)


def test_flipped_inputs_are_those_of_the_mirrored_image():
    rng = np.random.default_rng(0)
    mask = np.zeros((50, 70), np.uint8)
    mask[12:41, 9:37] = rng.random((29, 28)) < 0.7
    ys, xs = np.nonzero(mask)
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    rois, grids = roi_inputs([_rle(mask)], box, 2.0, 140, True, 7)
    mirrored = mask[:, ::-1]
    mirrored_box = np.array([[70 - box[0, 2], box[0, 1], 70 - box[0, 0], box[0, 3]]])
    want_rois, want_grids = roi_inputs([_rle(mirrored)], mirrored_box, 2.0, 140, False, 7)
    assert torch.allclose(rois, want_rois)
    assert torch.equal(grids, want_grids)
    assert rois[0, 0] == 0 and torch.allclose(rois[0, 1:], torch.from_numpy(mirrored_box[0] * 2))


def test_forward_gives_one_logit_per_class_and_background():
    model = build_classifier(_config(pool_size=5), num_classes=4)
    rois = torch.tensor([[0.0, 4.0, 4.0, 40.0, 30.0], [0.0, 0.0, 0.0, 64.0, 48.0]])
    logits = model(torch.randn(1, 3, 48, 64), rois, torch.ones(2, 5, 5))
    assert logits.shape == (2, 5)
    assert model.box_path[1].in_features == 96 * 5 * 5


def test_backbone_weights_come_from_the_proposal_model(tmp_path):
    config = _config()
    proposer = build_model({"head_channels": 8})
    path = save_atomic({"model": proposer.state_dict(), "config": config}, tmp_path / "m.pt")
    model = build_classifier(config, num_classes=2, pretrained=False)
    load_backbone_from(model, str(path), config)
    for key, value in proposer.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    other = validate_config({"model": {"backbone": "resnet18"}, "classify": {"fc_dim": 4}})
    with pytest.raises(IfcnError, match="backbone 'tiny'.*'resnet18'") as info:
        load_backbone_from(build_classifier(other, 2), str(path), other)
    assert str(path) in str(info.value)
