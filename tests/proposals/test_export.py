"""`ifcn export` (DESIGN §7): proposals.h5 to a COCO results JSON that pycocotools accepts."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ifcn import cli
from ifcn.evaluation.ar import evaluate
from ifcn.proposals.export import export_results
from ifcn.proposals.format import write_proposals
from tests.configs import settings

ATTRS = {
    "config": {},
    "checkpoint_sha256": "0" * 64,
    "dataset": "t",
    "scales": [1.0],
    "k": 5,
    "m": 21,
}
H, W = 48, 64


def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


@pytest.fixture
def inputs(tmp_path):
    """A GT JSON of three images and proposals.h5 with jittered GT boxes and random ones."""
    rng = np.random.default_rng(3)
    images, annotations, records = [], [], []
    for image_id in (4, 8, 15):
        images.append({"id": image_id, "height": H, "width": W, "file_name": f"{image_id}.png"})
        gt_boxes = []
        for _ in range(3):
            x0, y0 = rng.integers(0, W - 20), rng.integers(0, H - 20)
            b = (x0, y0, x0 + rng.integers(5, 20), y0 + rng.integers(5, 20))
            rle = mask_utils.encode(np.asfortranarray(box(*b)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                }
            )
            gt_boxes.append(b)
        n = 0 if image_id == 8 else 25
        masks = [
            box(*(np.array(gt_boxes[k % 3]) + rng.integers(-2, 3, 4)))
            if k % 2
            else box(*sorted(rng.integers(0, W, 2)), *sorted(rng.integers(0, H, 2)))
            for k in range(n)
        ]
        masks = [m if m.any() else box(0, 0, 1, 1) for m in masks]
        records.append(
            {
                "image_id": image_id,
                "file_name": f"{image_id}.png",
                "height": H,
                "width": W,
                "scores": np.sort(rng.random(n).astype(np.float32))[::-1],
                "boxes": np.zeros((n, 4), np.float32),
                "rles": [mask_utils.encode(np.asfortranarray(m))["counts"] for m in masks],
                "scales": np.zeros(n, np.int8),
            }
        )
    gt_path, h5_path = tmp_path / "gt.json", tmp_path / "proposals.h5"
    gt_path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]})
    )
    write_proposals(h5_path, records, ATTRS)
    return gt_path, h5_path, records


def test_exported_json_loads_with_loadres_and_cocoeval_agrees_with_ifcn(tmp_path, inputs):
    gt_path, h5_path, records = inputs
    out = tmp_path / "results.json"
    assert export_results(h5_path, out) == sum(len(r["scores"]) for r in records)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        coco_eval = COCOeval(gt, gt.loadRes(str(out)), iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = [1, 10, 100]
        coco_eval.evaluate()
        coco_eval.accumulate()
    ours = evaluate(gt_path, h5_path, settings("evaluate", max_dets=[1, 10, 100])).recall
    np.testing.assert_allclose(ours, coco_eval.eval["recall"][:, 0], atol=1e-9)
    assert coco_eval.eval["recall"][0, 0, 0, 2] > 0.5  # the data does get matched


def test_entries_hold_str_rle_score_and_category_but_no_bbox(tmp_path, inputs):
    _, h5_path, records = inputs
    out = tmp_path / "results.json"
    export_results(h5_path, out, category_id=3, top_n=4)
    entries = json.loads(out.read_text())
    assert len(entries) == 8  # 4 + 0 + 4: the image without proposals adds nothing
    first = entries[0]
    assert set(first) == {"image_id", "category_id", "segmentation", "score"}
    assert first["category_id"] == 3 and first["image_id"] == 4
    assert first["segmentation"] == {
        "size": [H, W],
        "counts": records[0]["rles"][0].decode(),
    }
    assert first["score"] == float(records[0]["scores"][0])  # float32 exactly


def test_cli_export_and_failure_leaves_no_output(tmp_path, inputs, capsys):
    _, h5_path, _ = inputs
    out = tmp_path / "out" / "results.json"
    argv = ["export", "--proposals", str(h5_path), "--out", str(out)]
    assert cli.main(argv + ["--top-n", "2"]) == 0
    assert len(json.loads(out.read_text())) == 4
    not_h5 = tmp_path / "not.h5"
    not_h5.write_text("{}")
    bad = tmp_path / "bad.json"
    assert cli.main(["export", "--proposals", str(not_h5), "--out", str(bad)]) == 2
    assert "not.h5: not a readable proposals file" in capsys.readouterr().err
    assert not bad.exists() and sorted(p.name for p in out.parent.iterdir()) == ["results.json"]


def test_out_ending_in_a_slash_and_a_category_id_beyond_64_bits_are_refused(
    tmp_path, inputs, capsys
):
    _, h5_path, _ = inputs
    out = tmp_path / "results.json"
    code = cli.main(["export", "--proposals", str(h5_path), "--out", f"{out}/"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith(f"{out}/: ends in '/', which names a folder; give the "
                                      "name of the file to write"), err  # fmt: skip
    for category in (2**70, 2**63, 0, -1):
        code = cli.main(["export", "--proposals", str(h5_path), "--out", str(out),
                         "--category-id", str(category)])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"--category-id {category}: a COCO category id is from 1 to {2**63 - 1}" in err
    assert not out.exists() and not list(tmp_path.glob(".results.json*"))


def test_the_largest_category_id_export_writes_is_one_evaluate_reads(tmp_path, inputs):
    gt_path, h5_path, _ = inputs
    largest = 2**63 - 1
    gt = json.loads(gt_path.read_text())
    gt["categories"] = [{"id": largest, "name": "thing"}]
    for ann in gt["annotations"]:
        ann["category_id"] = largest
    gt_path.write_text(json.dumps(gt))
    out = tmp_path / "results.json"
    assert cli.main(["export", "--proposals", str(h5_path), "--out", str(out),
                     "--category-id", str(largest)]) == 0  # fmt: skip
    ar = tmp_path / "ar.json"
    assert cli.main(["evaluate", "--gt", str(gt_path), "--proposals", str(out), "--out", str(ar),
                     "--workers", "1"]) == 0  # fmt: skip
    from_h5 = evaluate(gt_path, h5_path, settings("evaluate"))
    assert json.loads(ar.read_text())["AR@100"] == pytest.approx(from_h5.summary()["AR@100"])
