"""CocoInstances: samples as a pure function of (index, seed), consistent masks, loud bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from ifcn.config import defaults
from ifcn.data.dataset import CocoInstances, collate_single
from ifcn.data.image import IMAGENET_MEAN, IMAGENET_STD, load_image, resize_image, resized_shape
from ifcn.data.masks import mask_boxes
from ifcn.data.synth import generate_dataset
from ifcn.errors import IfcnError
from tests.data import BORRAT

H, W = 40, 60


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _write_dataset(root: Path, annotations: list[dict] | None = None, **overrides) -> Path:
    """One 40x60 PNG with a horizontal colour ramp and, by default, three annotations."""
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = np.arange(W, dtype=np.uint8)[None, :] * 4
    image[..., 1] = np.arange(H, dtype=np.uint8)[:, None] * 6
    cv2.imwrite(str(root / "a.png"), image[:, :, ::-1])
    block = np.zeros((H, W), np.uint8)
    block[6:16, 10:30] = 1
    crowd = np.zeros((H, W), np.uint8)
    crowd[20:35, 40:55] = 1
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": _rle(block), "iscrowd": 0},
            {
                "id": 2,
                "image_id": 7,
                "category_id": 2,
                "segmentation": [[2, 20, 20, 20, 20, 38, 2, 38]],
                "iscrowd": False,
            },
            {"id": 3, "image_id": 7, "category_id": 1, "segmentation": _rle(crowd), "iscrowd": 1},
        ]
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": H, "width": W}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        **overrides,
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def small(tmp_path) -> Path:
    return _write_dataset(tmp_path)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth = {"seed": 1, "num_train": 3, "num_val": 1, "min_side": 128, "max_side": 192}
    generate_dataset(out, defaults("data.synth") | synth)
    return out


def test_scale_is_drawn_from_the_list_and_decided_by_the_seed(small):
    ds = CocoInstances(small, small.parent, scales=[20, 40, 80], flip=True)
    sides = {min(ds[(0, seed)]["size"]) for seed in range(30)}
    assert sides == {20, 40, 80}
    for seed in (0, 5, 11):
        a, b = ds[(0, seed)], ds[(0, seed)]
        assert a["size"] == b["size"] and a["flipped"] == b["flipped"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    assert ds.draw(3) == CocoInstances(small, small.parent, [20, 40, 80], flip=True).draw(3)


def test_bare_index_means_first_scale_and_no_flip(small):
    sample = CocoInstances(small, small.parent, scales=[80, 20], flip=True)[0]
    assert sample["size"] == (80, 120) and not sample["flipped"]
    assert sample["scale"] == 2.0 and sample["orig_size"] == (H, W)


def test_flip_mirrors_image_masks_and_boxes_together(small):
    ds = CocoInstances(small, small.parent, scales=[40], flip=True)
    samples = {ds[(0, seed)]["flipped"]: ds[(0, seed)] for seed in range(20)}
    plain, flipped = samples[False], samples[True]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    x0, y0, x1, y1 = plain["boxes"].unbind(1)
    assert torch.equal(flipped["boxes"], torch.stack([W - x1, y0, W - x0, y1], 1))


def test_flip_off_never_flips(small):
    ds = CocoInstances(small, small.parent, scales=[40], flip=False)
    assert not any(ds[(0, seed)]["flipped"] for seed in range(10))


def test_max_size_caps_the_longer_side():
    assert resized_shape(40, 80, 60, max_size=100) == (50, 100, 1.25)
    assert resized_shape(40, 80, 60, max_size=None) == (60, 120, 1.5)
    image, scale = resize_image(np.zeros((40, 80, 3), np.uint8), 60, max_size=100)
    assert image.shape == (50, 100, 3) and scale == 1.25


def test_resized_size_rounds_half_up():
    assert resized_shape(100, 101, 50) == (50, 51, 0.5)  # 50.5 -> 51


def test_masks_and_boxes_agree_after_resize(small):
    sample = CocoInstances(small, small.parent, scales=[20])[0]
    masks, boxes = sample["masks"].numpy(), sample["boxes"]
    assert sample["size"] == (20, 30) and masks.shape == (3, 20, 30)
    assert torch.equal(boxes, torch.from_numpy(mask_boxes(masks)))
    assert boxes[0].tolist() == [5, 3, 15, 8]  # block rows 6:16, cols 10:30 halved
    assert set(np.unique(masks)) <= {0, 1}
    assert abs(int(masks[0].sum()) - 200 / 4) <= 10


def test_image_is_rgb_normalised_with_imagenet_statistics(small):
    sample = CocoInstances(small, small.parent, scales=[40])[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
    rgb = sample["image"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    np.testing.assert_allclose(rgb * 255, load_image(small.parent / "a.png"), atol=1e-3)


def test_crowd_is_kept_and_flagged(small):
    sample = CocoInstances(small, small.parent, scales=[40])[0]
    assert sample["iscrowd"].tolist() == [False, False, True]
    assert sample["category_ids"].tolist() == [1, 2, 1]


def test_mask_emptied_by_resizing_is_dropped(tmp_path):
    dot = np.zeros((H, W), np.uint8)
    dot[10, 10] = 1
    block = np.zeros((H, W), np.uint8)
    block[:20, :20] = 1
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": _rle(dot)},
        {"id": 2, "image_id": 7, "category_id": 2, "segmentation": _rle(block)},
    ]
    path = _write_dataset(tmp_path, anns)
    sample = CocoInstances(path, tmp_path, scales=[8])[0]
    assert sample["masks"].shape[0] == 1 and sample["category_ids"].tolist() == [2]


def test_missing_image_file_names_the_file(small):
    (small.parent / "a.png").unlink()
    with pytest.raises(IfcnError, match="a.png") as err:
        CocoInstances(small, small.parent, scales=[40])
    assert str(small) in str(err.value)


def test_undecodable_image_is_caught_by_verify_images(small):
    (small.parent / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = CocoInstances(small, small.parent, scales=[40])
    with pytest.raises(IfcnError, match=str(small.parent / "a.png")):
        ds.verify_images()


def test_verify_images_catches_a_size_mismatch(small):
    cv2.imwrite(str(small.parent / "a.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(IfcnError, match="a.png.*10x10"):
        CocoInstances(small, small.parent, scales=[40]).verify_images()


@pytest.mark.parametrize("segmentation", [None, [], {}, {"counts": "PPYo1"}])
def test_annotation_without_segmentation_names_the_json(tmp_path, segmentation):
    ann = {"id": 9, "image_id": 7, "category_id": 1}
    if segmentation is not None:
        ann["segmentation"] = segmentation
    path = _write_dataset(tmp_path, [ann])
    with pytest.raises(IfcnError, match="annotation 9") as err:
        CocoInstances(path, tmp_path, scales=[40])
    assert str(path) in str(err.value)


def test_polygon_of_fewer_than_three_points_is_an_empty_mask_not_an_error(tmp_path):
    anns = [{"id": 9, "image_id": 7, "category_id": 1, "segmentation": [[1, 2, 3, 4]]}]
    sample = CocoInstances(_write_dataset(tmp_path, anns), tmp_path, scales=[40])[0]
    assert sample["masks"].shape[0] == 0


def test_empty_image_list_names_the_json(tmp_path):
    path = _write_dataset(tmp_path, [], images=[])
    with pytest.raises(IfcnError, match="image list is empty") as err:
        CocoInstances(path, tmp_path, scales=[40])
    assert str(path) in str(err.value)


def test_annotation_of_unknown_image_names_the_json(tmp_path):
    anns = [{"id": 4, "image_id": 99, "category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]}]
    path = _write_dataset(tmp_path, anns)
    with pytest.raises(IfcnError, match="unknown image_id 99") as err:
        CocoInstances(path, tmp_path, scales=[40])
    assert str(path) in str(err.value)


def test_rle_of_another_size_names_the_json(tmp_path):
    anns = [{"id": 5, "image_id": 7, "category_id": 1, "segmentation": _rle(np.ones((4, 4)))}]
    path = _write_dataset(tmp_path, anns)
    with pytest.raises(IfcnError, match="RLE size"):
        CocoInstances(path, tmp_path, scales=[40])


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"images": []}'])
def test_json_that_is_not_coco_names_the_json(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(IfcnError, match=str(path)):
        CocoInstances(path, tmp_path, scales=[40])


def test_unreadable_json_names_the_json(tmp_path):
    with pytest.raises(IfcnError, match="missing.json"):
        CocoInstances(tmp_path / "missing.json", tmp_path, scales=[40])


def test_load_image_rejects_undecodable_files(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"garbage")
    with pytest.raises(IfcnError, match="x.jpg"):
        load_image(path)


def test_collate_single_returns_the_one_sample():
    assert collate_single([{"a": 1}]) == {"a": 1}
    with pytest.raises(ValueError):
        collate_single([{}, {}])


def test_works_on_a_synthetic_dataset(synth):
    ds = CocoInstances(synth / "train.json", synth / "images", scales=[256], flip=True)
    ds.verify_images()
    assert len(ds) == 3 and ds.image_ids == [1, 2, 3]
    for index in range(len(ds)):
        sample = ds[(index, index)]
        n = len(ds.annotations(index)["rles"])
        assert sample["masks"].shape == (n, *sample["size"]) and min(sample["size"]) == 256
        assert sample["category_ids"].tolist() and not sample["iscrowd"].any()
        assert sample["file_name"] == f"train_{sample['image_id']:06d}.png"


def test_works_on_a_real_roboflow_export():
    valid = BORRAT / "valid"
    ds = CocoInstances(valid / "_annotations.coco.json", valid, scales=[119, 267], max_size=300)
    assert len(ds) == 4
    polygon_image = next(
        a["image_id"]
        for a in json.loads((valid / "_annotations.coco.json").read_text())["annotations"]
        if isinstance(a["segmentation"], list)
    )
    for index in (0, ds.image_ids.index(polygon_image)):
        sample = ds[(index, 1)]
        assert sample["masks"].shape[0] == 1 and sample["masks"].sum() > 100
        assert sample["category_ids"].tolist() == [1] and max(sample["size"]) <= 300
