"""The evaluation's ground truth: the same from the check record as from the JSON, and GT masks
without a pixel counted aloud (issue 23, item 11)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ifcn import cli
from ifcn.errors import IfcnError
from ifcn.evaluation.ar import evaluate
from ifcn.evaluation.ground_truth import load_ground_truth
from tests.configs import settings
from tests.data.test_store import coco_like


def test_the_record_gives_the_ground_truth_of_the_json(tmp_path):
    path = coco_like(tmp_path)
    from_json = load_ground_truth(path)
    assert cli.main(["data", "check", "--json", str(path), "--images", str(tmp_path)]) == 0
    from_record = load_ground_truth(path)
    assert from_record.objects == from_json.objects
    for key in ("sizes", "crowd", "category_rank", "sha256", "empty"):
        assert getattr(from_record, key) == getattr(from_json, key), key
    assert [ann_id for _, _, ann_id in from_json.objects[5]] == [1, 6, 2]  # COCOeval's order


def _with_empty(tmp_path, all_empty: bool):
    path = coco_like(tmp_path)
    data = json.loads(path.read_text())
    for ann in data["annotations"]:
        if all_empty or ann["id"] == 7:
            ann["segmentation"] = [[5, 5, 5, 5, 5, 5]]  # three equal points: no pixel
            ann.pop("area", None)
    path.write_text(json.dumps(data))
    results = tmp_path / "results.json"
    full = {"size": [50, 50], "counts": "0T^2"}  # every pixel of image 2 (runs 0, 2500)
    results.write_text(json.dumps([{"image_id": 2, "category_id": 1, "score": 0.9,
                                    "segmentation": full}]))  # fmt: skip
    return path, results


def test_empty_ground_truth_masks_are_counted_and_said(tmp_path):
    path, results = _with_empty(tmp_path, all_empty=False)
    assert load_ground_truth(path).empty == {1: 0, 2: 1, 5: 0, 8: 0}
    result = evaluate(path, results, settings("evaluate"))
    assert any("1 of the 6 ground-truth masks are empty (no pixel)" in n for n in result.notes)
    assert result.num_gt["all"] == 6 and np.nanmax(result.recall) == 0.0


def test_ground_truth_with_every_mask_empty_is_refused(tmp_path):
    path, results = _with_empty(tmp_path, all_empty=True)
    with pytest.raises(IfcnError, match=rf"{path}: every one of the \d+ ground-truth masks"):
        evaluate(path, results, settings("evaluate"))
