"""The loss of eq. (1) for the ~DeepMask head: same labels and objectness, fc masks at 56×56."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ifcn.config import validate_config
from ifcn.criterion import DeepMaskCriterion, InstanceFCNCriterion, build_criterion
from ifcn.data.masks import mask_boxes
from ifcn.errors import IfcnError
from ifcn.model import build_model
from ifcn.windows import (
    POSITIVE,
    cell_grid,
    label_windows,
    mask_targets,
    sample_windows,
    top_left_of_cell,
)

M = 9  # windows of 72 px; objects of about 41 px are positives


def _config(head: str, m: int = M, scoring: str = "conv") -> dict:
    model = {"head": head, "m": m, "head_channels": 8, "deepmask_scoring": scoring}
    return validate_config({"model": model})


def _target(height: int = 96, width: int = 120) -> dict:
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 20:62, 24:64] = 1
    masks[1, 40:80, 70:110] = 1
    masks[1, 40:52, 70:82] = 0  # not a square: the mask target has a shape
    return {
        "masks": masks,
        "boxes": torch.from_numpy(mask_boxes(masks.numpy())),
        "iscrowd": torch.zeros(2, dtype=torch.bool),
    }


@pytest.fixture
def deepmask():
    torch.manual_seed(0)
    config = _config("deepmask")
    model = build_model(config["model"])
    return config, model, build_criterion(config, model)


def test_build_criterion_picks_the_heads_loss(deepmask):
    config, model, criterion = deepmask
    assert isinstance(criterion, DeepMaskCriterion) and criterion.mask_head is model.mask_head
    assert list(criterion.parameters()) == []  # the model owns the head's weights
    assert type(build_criterion(_config("instancefcn"))) is InstanceFCNCriterion
    with pytest.raises(IfcnError, match="needs the model"):
        build_criterion(config)


def test_mask_targets_at_another_size_cut_the_same_window_finer():
    masks = torch.zeros(2, 96, 120, dtype=torch.uint8)
    masks[0, 16:64, 24:64] = 1  # edges on cell edges: each cell is 4×4 equal fine pixels
    masks[1, 40:80, 72:112] = 1
    masks[1, 40:48, 72:80] = 0
    tops = torch.tensor([[1, 2], [-2, 5]])
    instance = torch.tensor([0, 1])
    coarse, coarse_valid = mask_targets(masks, instance, tops, M)
    fine, fine_valid = mask_targets(masks, instance, tops, M, size=4 * M)
    assert fine.shape == (2, 4 * M, 4 * M) and coarse.sum() > 0
    up = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(fine, up)
    up_valid = coarse_valid.repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(fine_valid, up_valid)
    assert not fine_valid[1, :8].any() and fine_valid[1, 8:].all()  # 2 cells above the image


def test_deepmask_mask_loss_is_the_heads_56x56_logits_against_the_window_targets(deepmask):
    config, model, criterion = deepmask
    target = _target()
    outputs = model(torch.randn(1, 3, 96, 120))
    losses = criterion(outputs, target, torch.Generator().manual_seed(1))
    assert losses["num_pos"] > 0

    # the same windows, drawn again with the same generator, scored by hand
    objectness = outputs["objectness"][0, 0]
    tops = top_left_of_cell(cell_grid(*objectness.shape), M)
    labels, matched = label_windows(tops, target["boxes"], target["iscrowd"], criterion.rule)
    pos, neg = sample_windows(labels, 256, 0.5, torch.Generator().manual_seed(1))
    assert (labels[pos] == POSITIVE).all() and len(pos) == losses["num_pos"]
    logits = model.mask_head.forward_windows(
        outputs["features"], torch.zeros(len(pos), dtype=torch.long), tops[pos]
    )
    assert logits.shape == (len(pos), 56, 56)
    gt, valid = mask_targets(target["masks"], matched[pos], tops[pos], M, size=56)
    expected = F.binary_cross_entropy_with_logits(logits[valid], gt[valid])
    torch.testing.assert_close(losses["loss_mask"], expected)
    sampled = torch.cat([pos, neg])
    objectness_loss = F.binary_cross_entropy_with_logits(
        objectness.reshape(-1)[sampled], (labels[sampled] == POSITIVE).float()
    )
    torch.testing.assert_close(losses["loss_objectness"], objectness_loss)


def test_deepmask_loss_trains_the_fc_head_and_the_backbone(deepmask):
    _, model, criterion = deepmask
    losses = criterion(model(torch.randn(1, 3, 96, 120)), _target())
    losses["loss_mask"].backward()
    for name in ("transform", "fc", "mask"):
        assert getattr(model.mask_head, name).weight.grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_without_positives_every_head_weight_still_gets_a_zero_gradient(deepmask):
    _, model, criterion = deepmask
    empty = {
        "masks": torch.zeros(0, 96, 120, dtype=torch.uint8),
        "boxes": torch.zeros(0, 4),
        "iscrowd": torch.zeros(0, dtype=torch.bool),
    }
    losses = criterion(model(torch.randn(1, 3, 96, 120)), empty)
    assert losses["num_pos"] == 0 and losses["loss_mask"] == 0
    losses["loss"].backward()
    for p in model.mask_head.parameters():
        assert p.grad is not None and not p.grad.any()


def test_deepmask_fc_scoring_trains_on_the_sampled_windows_what_inference_reads_densely():
    torch.manual_seed(0)
    config = _config("deepmask", m=7, scoring="fc")  # windows of 56 px: objects of ~32 px
    model = build_model(config["model"])
    criterion = build_criterion(config, model)
    assert criterion.scoring is model.objectness_branch
    masks = torch.zeros(2, 96, 120, dtype=torch.uint8)
    masks[0, 20:52, 24:54] = 1
    masks[1, 50:82, 70:100] = 1
    target = {
        "masks": masks,
        "boxes": torch.from_numpy(mask_boxes(masks.numpy())),
        "iscrowd": torch.zeros(2, dtype=torch.bool),
    }
    images = torch.randn(1, 3, 96, 120)
    outputs = model.train()(images)
    assert "objectness" not in outputs
    model.objectness_branch.eval()  # its dropout off, so the two readings compare
    losses = criterion(outputs, target, torch.Generator().manual_seed(2))
    assert losses["num_pos"] > 0 and losses["num_neg"] > 0

    tops = top_left_of_cell(cell_grid(12, 15), 7)
    labels, _ = label_windows(tops, target["boxes"], target["iscrowd"], criterion.rule)
    pos, neg = sample_windows(labels, 256, 0.5, torch.Generator().manual_seed(2))
    sampled = torch.cat([pos, neg])
    dense = model.eval()(images)["objectness"][0, 0].reshape(-1)[sampled]
    expected = F.binary_cross_entropy_with_logits(dense, (labels[sampled] == POSITIVE).float())
    torch.testing.assert_close(losses["loss_objectness"], expected, rtol=1e-4, atol=1e-5)
    losses["loss_objectness"].backward()
    for name, param in model.objectness_branch.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("m", [11, 21])
def test_deepmask_ablation_trains_with_fc_scoring_at_any_m(m):
    """Issue 25: model.m: 11 (not a multiple of 7) runs the ~DeepMask ablation like m = 21:
    forward, both loss terms on sampled windows, gradients into the fc scoring branch."""
    torch.manual_seed(m)
    config = _config("deepmask", m=m, scoring="fc")
    model = build_model(config["model"]).train()
    criterion = build_criterion(config, model)
    side = round(8 * m * 128 / 224)  # the canonical object of a window of m cells
    height, width = 16 * m, 20 * m
    masks = torch.zeros(1, height, width, dtype=torch.uint8)
    masks[0, 8 * m : 8 * m + side, 8 * m : 8 * m + side] = 1
    target = {
        "masks": masks,
        "boxes": torch.from_numpy(mask_boxes(masks.numpy())),
        "iscrowd": torch.zeros(1, dtype=torch.bool),
    }
    losses = criterion(model(torch.randn(1, 3, height, width)), target)
    assert losses["num_pos"] > 0 and losses["num_neg"] > 0
    assert torch.isfinite(losses["loss"]) and losses["loss_objectness"] > 0
    losses["loss"].backward()
    for name, param in model.objectness_branch.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("head", ["instancefcn", "deepmask"])
def test_loss_reduction_sum_is_eq_1_literally_and_mean_our_per_term_average(head):
    """Eq. (1): sum over sampled windows i of L(p_i, p_i*) + sum over their pixels j of
    L(S_ij, S_ij*). `mean` (the default) averages each term over its own count and adds 1:1."""
    torch.manual_seed(0)
    config = _config(head)
    assert config["train"]["loss_reduction"] == "mean"  # the schema's default
    model = build_model(config["model"])
    literal = validate_config({**config, "train": {**config["train"], "loss_reduction": "sum"}})
    target = _target()
    outputs = model(torch.randn(1, 3, 96, 120))
    mean = build_criterion(config, model)(outputs, target, torch.Generator().manual_seed(1))
    total = build_criterion(literal, model)(outputs, target, torch.Generator().manual_seed(1))
    assert mean["num_pos"] > 0 and (mean["num_pos"], mean["num_neg"]) == (
        total["num_pos"],
        total["num_neg"],
    )

    # the same positives, drawn again: their in-image pixels count the mask term's terms
    tops = top_left_of_cell(cell_grid(12, 15), M)
    rule = build_criterion(config, model).rule
    labels, matched = label_windows(tops, target["boxes"], target["iscrowd"], rule)
    pos, _ = sample_windows(labels, 256, 0.5, torch.Generator().manual_seed(1))
    size = 56 if head == "deepmask" else M  # fc masks are 56×56; assembled ones m×m cells
    _, valid = mask_targets(target["masks"], matched[pos], tops[pos], M, size=size)
    windows, pixels = mean["num_pos"] + mean["num_neg"], valid.sum()
    torch.testing.assert_close(total["loss_objectness"], mean["loss_objectness"] * windows)
    torch.testing.assert_close(total["loss_mask"], mean["loss_mask"] * pixels)
    for losses in (mean, total):
        torch.testing.assert_close(losses["loss"], losses["loss_objectness"] + losses["loss_mask"])
    assert total["loss"] > 100 * mean["loss"]  # the settings differ as stated, not by a hair
    with pytest.raises(IfcnError, match="unknown train.loss_reduction 'max'"):
        InstanceFCNCriterion(rule, reduction="max")
