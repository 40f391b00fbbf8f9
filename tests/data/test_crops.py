"""Crops around sampled windows (paper Table 2's "crop 224×224" training)."""

from __future__ import annotations

import pytest
import torch

from ifcn.config import load_config, validate_config
from ifcn.criterion import build_criterion
from ifcn.data.crops import CropInstances, build_train_dataset, crop_origin, cut
from ifcn.data.dataset import CocoInstances
from ifcn.data.masks import mask_boxes
from ifcn.model import build_model
from ifcn.windows import LabelRule

RULE = LabelRule(m=9)  # windows of 72 px, canonical object size 72·128/224 ≈ 41 px


class FakeInstances:
    """A CocoInstances stand-in: one resized sample whatever the key."""

    def __init__(self, height: int, width: int, squares: list[tuple[int, int, int]]):
        self.height, self.width = height, width
        masks = torch.zeros(len(squares), height, width, dtype=torch.uint8)
        for i, (y, x, side) in enumerate(squares):
            masks[i, y : y + side, x : x + side] = 1
        self.masks = masks
        self.verified = False

    def __len__(self) -> int:
        return 1

    def verify_images(self) -> None:
        self.verified = True

    def __getitem__(self, key) -> dict:
        n = len(self.masks)
        image = torch.arange(3 * self.height * self.width, dtype=torch.float32)
        return {
            "image": image.view(3, self.height, self.width) + 1.0,  # no pixel is zero
            "masks": self.masks.clone(),
            "boxes": torch.from_numpy(mask_boxes(self.masks.numpy())),
            "iscrowd": torch.zeros(n, dtype=torch.bool),
            "category_ids": torch.arange(n) + 1,
            "image_id": 7,
            "size": (self.height, self.width),
        }


def test_crop_origin_stays_inside_a_large_image_and_covers_a_small_one():
    assert crop_origin(50, 300, 224) == 0
    assert crop_origin(200, 300, 224) == 76
    assert crop_origin(150, 300, 224) == 38
    assert crop_origin(10, 100, 224) == -102  # the whole image lies inside the crop
    assert crop_origin(500, 100, 224) == 0
    assert crop_origin(-500, 100, 224) == -124


def test_cut_shifts_masks_and_boxes_and_drops_empty_instances():
    base = FakeInstances(120, 160, [(10, 10, 30), (60, 100, 40), (100, 0, 20)])
    sample = base[0]
    out = cut(sample, 64, 40, 80)  # rows 40..104, cols 80..144
    assert out["image"].shape == (3, 64, 64) and out["size"] == (64, 64)
    torch.testing.assert_close(out["image"], sample["image"][:, 40:104, 80:144])
    assert len(out["masks"]) == 1 and out["category_ids"].tolist() == [2]
    torch.testing.assert_close(out["masks"][0], sample["masks"][1, 40:104, 80:144])
    assert out["boxes"].tolist() == [[20.0, 20.0, 60.0, 60.0]]
    assert out["crop_origin"] == (40, 80)


def test_cut_keeps_the_whole_box_of_an_object_the_edge_cuts():
    sample = FakeInstances(120, 160, [(50, 50, 40)])[0]
    out = cut(sample, 64, 0, 0)  # the square spans 50..90: cut at 64
    assert out["boxes"].tolist() == [[50.0, 50.0, 90.0, 90.0]]
    assert out["masks"][0].sum() == 14 * 14


def test_cut_pads_a_small_image_with_zeros():
    sample = FakeInstances(50, 60, [(5, 5, 20)])[0]
    out = cut(sample, 80, -10, -20)
    assert out["image"].shape == (3, 80, 80)
    torch.testing.assert_close(out["image"][:, 10:60, 20:80], sample["image"])
    assert (out["image"][:, :10] == 0).all() and (out["image"][:, :, :20] == 0).all()
    assert out["boxes"].tolist() == [[25.0, 15.0, 45.0, 35.0]]


def test_crops_are_a_function_of_the_seed():
    base = FakeInstances(300, 400, [(40, 60, 40), (200, 300, 42), (150, 150, 45)])
    crops = CropInstances(base, 96, RULE)
    first, again = crops[(0, 1234)], crops[(0, 1234)]
    assert first["crop_origin"] == again["crop_origin"]
    torch.testing.assert_close(first["image"], again["image"])
    origins = {crops[(0, seed)]["crop_origin"] for seed in range(20)}
    assert len(origins) > 5


def test_positive_crops_centre_an_object_of_the_windows_size():
    squares = [(40, 60, 40), (200, 300, 42), (150, 150, 120)]  # the last is too large
    base = FakeInstances(300, 400, squares)
    crops = CropInstances(base, 96, RULE, positive_probability=1.0)
    for seed in range(10):
        out = crops[(0, seed)]
        y0, x0 = out["crop_origin"]
        centre = torch.tensor([x0 + 48.0, y0 + 48.0])
        objects = torch.tensor([[80.0, 60.0], [321.0, 221.0]])  # (x, y) of the two small ones
        assert (centre - objects).abs().max(dim=1).values.min() <= RULE.pos_shift + 1


def test_without_positives_the_crop_is_uniform():
    base = FakeInstances(300, 400, [(100, 100, 150)])  # no window's size
    crops = CropInstances(base, 96, RULE, positive_probability=1.0)
    origins = {crops[(0, seed)]["crop_origin"] for seed in range(10)}
    assert len(origins) > 5


def test_the_criterion_labels_the_windows_of_a_crop():
    base = FakeInstances(300, 400, [(40, 60, 40), (200, 300, 42)])
    sample = CropInstances(base, 96, RULE, positive_probability=1.0)[(0, 3)]
    config = validate_config({"model": {"m": 9, "head_channels": 8}})
    model = build_model(config["model"])
    criterion = build_criterion(config)
    outputs = model(sample["image"][None] / 1e4)
    assert outputs["objectness"].shape[-2:] == (12, 12)
    losses = criterion(outputs, sample, torch.Generator().manual_seed(0))
    assert losses["num_pos"] > 0 and torch.isfinite(losses["loss"])


@pytest.mark.parametrize("crop", [None, 64])
def test_build_train_dataset_follows_train_crop(tmp_path, tiny_data, make_config, crop):
    config = load_config(make_config(tmp_path, tiny_data, train={"crop": crop}))
    dataset = build_train_dataset(config)
    if crop is None:
        assert isinstance(dataset, CocoInstances)
        return
    assert isinstance(dataset, CropInstances) and len(dataset) == len(dataset.dataset)
    dataset.verify_images()
    sample = dataset[(1, 99)]
    assert sample["image"].shape[1:] == (64, 64) and sample["masks"].shape[1:] == (64, 64)
    assert len(sample["boxes"]) == len(sample["masks"]) == len(sample["iscrowd"])
    assert all(m.any() for m in sample["masks"])
