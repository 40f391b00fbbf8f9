"""The classifier network: RoI masking, mask grids on the RoIAlign grid, backbone weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models import vgg as tv_vgg
from torchvision.ops import roi_align

from ifcn.classify.model import (
    ProposalClassifier,
    build_classifier,
    load_backbone_from,
    mask_grids,
    roi_inputs,
)
from ifcn.classify.settings import classifier_summary, mask_grid_size
from ifcn.config import load_config, validate_config
from ifcn.errors import IfcnError
from ifcn.model import build_model
from ifcn.model.backbone import TinyBackbone
from ifcn.training.checkpoint import save_atomic


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _config(**classify) -> dict:
    return validate_config({"classify": {"fc_dim": 16, **classify}})


def test_roi_masking_zeroes_features_outside_the_mask_before_the_2x2_max():
    model = ProposalClassifier(TinyBackbone(width=16), num_classes=3, pool_size=4, fc_dim=8)
    assert model.grid_size == mask_grid_size(4) == 8
    features = torch.rand(1, 16, 10, 12) + 0.5  # no zeros of its own
    rois = torch.tensor([[0.0, 8.0, 8.0, 72.0, 64.0], [0.0, 0.0, 0.0, 96.0, 80.0]])
    grids = torch.zeros(2, 8, 8)
    grids[0, :, :4] = 1  # left half of the first RoI
    grids[1, 2:6, 3:6] = 1  # a block of the second, off the 2x2 cells on the left
    boxed, masked = model.roi_features(features, rois, grids)
    assert boxed.shape == masked.shape == (2, 16, 4, 4)
    fine = roi_align(features, rois, 8, 1 / 8, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(boxed, F.max_pool2d(fine, 2))
    torch.testing.assert_close(masked, F.max_pool2d(fine * grids[:, None], 2))
    assert (masked[0, :, :, 2:] == 0).all() and torch.equal(masked[0, :, :, :2], boxed[0, :, :, :2])
    assert (masked[1, :, 0] == 0).all() and (masked[1, :, 1:3, 1:3] > 0).all()


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
    logits = model(torch.randn(1, 3, 48, 64), rois, torch.ones(2, 10, 10))
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


def _vgg16_file(tmp_path):
    torch.manual_seed(3)
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"]).state_dict()
    state = {f"features.{k}": v for k, v in features.items()}
    state["classifier.0.weight"] = torch.randn(4096, 512 * 7 * 7) * 0.01
    state["classifier.0.bias"] = torch.randn(4096)
    state["classifier.3.weight"] = torch.randn(4096, 4096) * 0.01
    state["classifier.3.bias"] = torch.randn(4096)
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    return tmp_path / "vgg16-397923af.pth", state


def test_mnc_fc6_fc7_come_from_the_vgg16_imagenet_file(tmp_path):
    path, state = _vgg16_file(tmp_path)
    model_cfg = {"backbone": "vgg16", "pretrained": True, "weights": str(path)}
    config = validate_config(
        {"model": model_cfg, "classify": {"fc_dim": 4096, "pretrained_fc": True}}
    )
    model = build_classifier(config, num_classes=20)
    for fc_path in (model.box_path, model.mask_path):
        for ours, theirs in ((fc_path[1], "classifier.0"), (fc_path[3], "classifier.3")):
            assert torch.equal(ours.weight, state[f"{theirs}.weight"])
            assert torch.equal(ours.bias, state[f"{theirs}.bias"])
    assert torch.equal(model.backbone.features[0].weight, state["features.0.weight"])
    assert model.cls_score.weight.shape == (21, 2 * 4096)
    # a classifier checkpoint will overwrite the fc layers: no ImageNet file read then
    missing = validate_config(
        {"model": {**model_cfg, "weights": str(tmp_path / "gone.pth")},
         "classify": {"fc_dim": 4096, "pretrained_fc": True}}
    )  # fmt: skip
    build_classifier(missing, 20, pretrained=False, imagenet_fc=False)
    with pytest.raises(IfcnError, match="not found") as info:
        build_classifier(missing, 20, pretrained=False)
    assert info.value.path == tmp_path / "gone.pth"


def test_pretrained_fc_needs_vgg16_and_its_fc_sizes(tmp_path):
    path, _ = _vgg16_file(tmp_path)
    with pytest.raises(IfcnError, match="needs model.backbone vgg16"):
        build_classifier(_config(pretrained_fc=True), 2)
    narrow = validate_config(
        {"model": {"backbone": "vgg16", "weights": str(path)},
         "classify": {"fc_dim": 256, "pretrained_fc": True}}
    )  # fmt: skip
    with pytest.raises(IfcnError, match=r"classifier.0.weight is shape \(4096, 25088\)") as info:
        build_classifier(narrow, 2)
    assert info.value.path == path and "\n" not in str(info.value)


def test_the_summary_of_the_voc2012_config_names_mncs_settings():
    root = Path(__file__).resolve().parents[2]
    summary = classifier_summary(load_config(root / "config" / "voc2012.yaml"))
    assert summary == (
        "classifier: vgg16 backbone, 2 paths x 2 fc 4096-d (ImageNet fc6/fc7), RoI 14x14 -> 7x7,"
        " shorter side 600 px (test 600, max 1000), 40000 iterations at lr 0.001, 64 RoIs/image,"
        " top 300 proposals, AP voc"
    )


def test_roi_norm_standardises_each_channel_of_both_paths_before_the_fc_layers():
    model = build_classifier(_config(pool_size=2), num_classes=3).train()
    assert isinstance(model.box_norm, torch.nn.BatchNorm2d)
    assert isinstance(model.mask_norm, torch.nn.BatchNorm2d)
    features = torch.rand(1, 96, 10, 12) * torch.linspace(0.1, 50, 96)[None, :, None, None]
    rois = torch.tensor([[0.0, 0.0, 0.0, 40.0, 30.0], [0.0, 8.0, 16.0, 96.0, 80.0]] * 4)
    boxed, _ = model.roi_features(features, rois, torch.ones(8, 4, 4))
    normed = model.box_norm(boxed)
    torch.testing.assert_close(normed.mean((0, 2, 3)), torch.zeros(96), atol=1e-4, rtol=0)
    plain = build_classifier(_config(roi_norm=False), num_classes=3)
    assert isinstance(plain.box_norm, torch.nn.Identity)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
