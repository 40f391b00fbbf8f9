"""The synthetic dataset: deterministic, occlusion-correct, and full of touching look-alikes."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

from ifcn.cli import main as cli_main
from ifcn.config import defaults
from ifcn.data.synth import SynthParams, generate_dataset, render_image
from ifcn.errors import IfcnError

SMALL = defaults("data.synth") | dict(num_train=8, num_val=3, min_side=160, max_side=224)
PARAMS = SynthParams(min_side=160, max_side=224, min_objects=2, max_objects=6)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, SMALL | {"seed": 3})
    return out


def _decoded(ann: dict) -> np.ndarray:
    return mask_utils.decode(ann["segmentation"])


def test_same_seed_gives_identical_bytes_for_any_worker_count(dataset, tmp_path):
    generate_dataset(tmp_path, SMALL | {"seed": 3}, workers=2)
    assert _files(tmp_path) == _files(dataset)


def test_different_seed_gives_different_data(dataset, tmp_path):
    generate_dataset(tmp_path, SMALL | {"seed": 4})
    assert (tmp_path / "train.json").read_bytes() != (dataset / "train.json").read_bytes()
    assert (tmp_path / "images" / "train_000001.png").read_bytes() != (
        dataset / "images" / "train_000001.png"
    ).read_bytes()


def test_json_loads_with_pycocotools_and_images_match_it(dataset):
    for split, n in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        coco = COCO(str(dataset / f"{split}.json"))
        assert len(coco.imgs) == n
        for img in coco.imgs.values():
            assert img["file_name"].startswith(f"{split}_")
            image = cv2.imread(str(dataset / "images" / img["file_name"]))
            assert image.shape == (img["height"], img["width"], 3)
            assert SMALL["min_side"] <= min(image.shape[:2])
            assert max(image.shape[:2]) <= SMALL["max_side"]


def test_annotation_area_and_bbox_match_the_rle(dataset):
    anns = json.loads((dataset / "train.json").read_text())["annotations"]
    assert anns
    for ann in anns:
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["iscrowd"] == 0
        assert ann["area"] == int(mask_utils.area(ann["segmentation"])) == _decoded(ann).sum()
        assert ann["bbox"] == mask_utils.toBbox(ann["segmentation"]).tolist()
        assert ann["area"] >= 150


def test_visible_masks_are_disjoint_within_an_image(dataset):
    data = json.loads((dataset / "train.json").read_text())
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        cover = sum(_decoded(a).astype(np.int32) for a in anns)
        assert cover.max() <= 1


def test_three_or_more_categories_are_used(dataset):
    anns = json.loads((dataset / "train.json").read_text())["annotations"]
    assert len({a["category_id"] for a in anns}) >= 3


def test_many_same_colour_same_category_instances_touch():
    params = PARAMS
    touching, total = 0, 0
    for index in range(12):
        _, objects = render_image(0, "train", index, params)
        total += len(objects)
        for a, b in combinations(objects, 2):
            if a.category_id == b.category_id and a.colour == b.colour:
                grown = cv2.dilate(a.mask, np.ones((3, 3), np.uint8))
                touching += bool(np.any(grown & b.mask))
    assert touching >= total // 6


def test_object_colour_is_painted_under_its_visible_mask():
    image, objects = render_image(1, "val", 0, PARAMS)
    for obj in objects:
        inside = image[obj.mask.astype(bool)].astype(np.float32)
        assert np.abs(np.median(inside, 0) - np.array(obj.colour)).max() < 60


def test_cli_writes_train_val_and_images(tmp_path):
    argv = ["data", "synth", "--out", str(tmp_path), "--num-train", "2", "--num-val", "1"]
    assert cli_main(argv + ["--min-side", "128", "--max-side", "160"]) == 0
    assert (tmp_path / "train.json").is_file() and (tmp_path / "val.json").is_file()
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "train_000001.png",
        "train_000002.png",
        "val_000001.png",
    ]


def test_bad_parameters_raise_ifcn_error_naming_the_output(tmp_path):
    with pytest.raises(IfcnError, match=str(tmp_path)):
        generate_dataset(tmp_path, SMALL | {"min_side": 300, "max_side": 200})
    assert not (tmp_path / "train.json").exists()
