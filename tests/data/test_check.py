"""`ifcn data check`: what makes a COCO JSON + image folder unusable, and the summary table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ifcn import cli
from ifcn.data.check import check_dataset
from ifcn.data.rle import encode_mask, rle_area_bbox

SIDE = 120


def _ann(aid: int, image_id: int, category_id: int, mask: np.ndarray, iscrowd: int = 0) -> dict:
    rle = encode_mask(mask)
    area, bbox = rle_area_bbox(rle)
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": area,
        "bbox": bbox,
        "iscrowd": iscrowd,
    }


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path, dict]:
    """Two 120×120 images: small, medium and large instances, a crowd region, an empty image."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (SIDE, SIDE), (90, 20, 200)).save(images / name)
    data = {
        "info": {"image_root": "images"},
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": SIDE, "width": SIDE},
            {"id": 2, "file_name": "b.png", "height": SIDE, "width": SIDE},
        ],
        "annotations": [
            _ann(1, 1, 1, _box(0, 10, 0, 10)),  # 100 px: small
            _ann(2, 1, 1, _box(20, 60, 20, 60)),  # 1600 px: medium
            _ann(3, 1, 2, _box(0, 100, 0, 100)),  # 10000 px: large
            _ann(4, 1, 2, _box(100, 120, 0, 120), iscrowd=1),
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    return path, images, data


def _rewrite(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_clean_dataset_passes_with_counts_per_category_and_size(dataset):
    path, _, _ = dataset
    report = check_dataset(path)  # image root taken from info.image_root
    assert report.ok and not report.warnings
    assert (report.images, report.empty_images) == (2, 1)
    table = report.summary
    assert table.loc[1, ["name", "instances", "small", "medium", "large"]].tolist() == [
        "cat",
        2,
        1,
        1,
        0,
    ]
    assert table.loc[2, ["instances", "crowd", "large"]].tolist() == [1, 1, 1]
    assert table.loc["total", ["instances", "crowd"]].tolist() == [3, 1]


def test_unreadable_and_missing_images_are_problems(dataset):
    path, images, _ = dataset
    (images / "a.jpg").write_bytes((images / "a.jpg").read_bytes()[:200])
    (images / "b.png").unlink()
    problems = check_dataset(path).problems
    assert any("image 1 ('a.jpg'): unreadable" in p for p in problems)
    assert any("image 2 ('b.png'): file not found" in p for p in problems)


def test_image_of_another_size_than_recorded_is_a_problem(dataset):
    path, images, _ = dataset
    Image.new("RGB", (SIDE, SIDE + 1)).save(images / "b.png")
    assert check_dataset(path).problems == [
        "image 2 ('b.png'): file is 120x121, the JSON says 120x120"
    ]


def test_masks_outside_their_image_or_empty_are_problems(dataset):
    path, _, data = dataset
    anns = data["annotations"]
    anns[0]["segmentation"] = encode_mask(np.ones((SIDE + 2, SIDE), np.uint8))
    anns[1]["segmentation"] = [[100, 100, 130, 100, 130, 110]]
    anns[2]["segmentation"] = encode_mask(np.zeros((SIDE, SIDE), np.uint8))
    problems = check_dataset(_rewrite(path, data)).problems
    assert len(problems) == 3
    assert "annotation 1" in problems[0] and "RLE size [122, 120]" in problems[0]
    assert "annotation 2: polygon reaches outside image 1" in problems[1]
    assert "annotation 3" in problems[2] and "empty mask" in problems[2]


def test_duplicate_ids_and_unknown_references_are_problems(dataset):
    path, _, data = dataset
    data["images"].append(dict(data["images"][0]))
    data["annotations"][1]["id"] = 1
    data["annotations"][2]["category_id"] = 7
    data["annotations"][3]["image_id"] = 99
    problems = check_dataset(_rewrite(path, data)).problems
    assert problems == [
        "duplicate image id 1",
        "duplicate annotation id 1",
        "annotation 3: unknown category_id 7",
        "annotation 4: unknown image_id 99",
    ]


def test_stale_area_bbox_and_unused_category_are_only_warnings(dataset):
    path, _, data = dataset
    data["annotations"][0]["area"] = 50
    data["annotations"][1]["bbox"] = [0, 0, 5, 5]
    data["annotations"][0]["iscrowd"] = False
    data["categories"].append({"id": 3, "name": "unused"})
    report = check_dataset(_rewrite(path, data))
    assert report.ok
    assert dict(report.warnings) == {
        "area differs from the mask area by more than 1%": 1,
        "bbox differs from the mask's tight box by more than 1 px": 1,
        "iscrowd stored as a boolean": 1,
        "categories without annotations": 1,
    }


def test_cli_writes_summary_csv_only_when_the_check_passes(dataset, capsys):
    path, images, data = dataset
    out = path.parent / "summary.csv"
    argv = ["data", "check", "--json", str(path), "--images", str(images), "--workers", "2"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images: 2 (1 without annotations); instances: 3 (+ 1 crowd)" in printed
    assert out.read_text().splitlines()[0] == "category_id,name,instances,crowd,small,medium,large"
    out.unlink()
    data["annotations"][0]["id"] = 2
    _rewrite(path, data)
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"ifcn data check: error: {path}: check failed with 1 problems; "
        "first: duplicate annotation id 2"
    )
    assert not out.exists()
