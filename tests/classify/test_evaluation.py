"""mAP@0.5 / mAP@0.7 (SDS region AP or COCOeval at IoU 0.5 and 0.7) and the per-class mask
NMS before it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ifcn.classify.evaluation import evaluate_segm
from ifcn.classify.metrics import voc11_ap, voc_ap
from ifcn.classify.prediction import mask_nms, select_detections
from ifcn.cli import main as cli_main
from ifcn.errors import IfcnError

H, W = 60, 100


def _mask(x0: int, x1: int, y0: int = 10, y1: int = 30) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _rle(mask: np.ndarray, text: bool = False) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [H, W], "counts": rle["counts"].decode() if text else rle["counts"]}


@pytest.fixture
def gt_json(tmp_path):
    anns = [
        (1, _mask(0, 20)),  # A
        (1, _mask(40, 60)),  # B
        (2, _mask(70, 90, 35, 55)),  # C
    ]
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 7,
                "category_id": c,
                "segmentation": _rle(m, text=True),
                "area": int(m.sum()),
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
            }
            for i, (c, m) in enumerate(anns)
        ],
        "categories": [{"id": k, "name": n} for k, n in ((1, "box"), (2, "blob"), (3, "none"))],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def _result(category: int, mask: np.ndarray, score: float) -> dict:
    return {
        "image_id": 7,
        "category_id": category,
        "segmentation": _rle(mask, True),
        "score": score,
    }


def _hand_results(directory: Path) -> Path:
    """segm.json of four results against `gt_json`, whose APs the tests work out by hand."""
    results = [
        _result(1, _mask(0, 20), 0.9),  # A: true positive
        _result(1, _mask(20, 35), 0.8),  # matches nothing: false positive
        _result(1, _mask(40, 60), 0.7),  # B: true positive
        _result(2, _mask(70, 90, 42, 55), 0.6),  # C at IoU 13/20: only counts at 0.5
    ]
    path = directory / "segm.json"
    path.write_text(json.dumps(results))
    return path


def test_ap_at_0_5_and_0_7_match_the_hand_computed_values(tmp_path, gt_json, capsys):
    path = _hand_results(tmp_path)
    out = tmp_path / "eval" / "segm_eval.json"
    assert cli_main(["classify", "evaluate", "--gt", str(gt_json), "--results", str(path),
                     "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads(out.read_text())
    # category 1: precision 1 up to recall 0.5, 2/3 beyond: 51 and 50 of COCO's 101 points
    ap1 = (51 + 50 * 2 / 3) / 101
    assert summary["per_category"] == [
        {"category_id": 1, "name": "box", "AP@0.5": pytest.approx(ap1),
         "AP@0.7": pytest.approx(ap1)},
        {"category_id": 2, "name": "blob", "AP@0.5": pytest.approx(1.0), "AP@0.7": 0.0},
        {"category_id": 3, "name": "none", "AP@0.5": None, "AP@0.7": None},
    ]  # fmt: skip
    assert summary["mAP@0.5"] == pytest.approx((ap1 + 1) / 2)
    assert summary["mAP@0.7"] == pytest.approx(ap1 / 2)
    table = capsys.readouterr().out
    assert "mean (mAP)" in table and f"{100 * (ap1 + 1) / 2:.1f}" in table


def test_no_results_give_zero_ap(tmp_path, gt_json):
    path = tmp_path / "segm.json"
    path.write_text("[]")
    summary = evaluate_segm(gt_json, path, "coco")
    assert summary["mAP@0.5"] == 0.0 and summary["mAP@0.7"] == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"category_id": 9}, "category_id 9 is not in"),
        ({"image_id": 8}, "image_id 8 is not in"),
        ({"score": "nan"}, "score 'nan' is not a finite number"),
        ({"category_id": None}, "category_id None is not in the ground truth"),
        ({"segmentation": {"size": [H, W], "counts": "0a"}}, "not COCO's compressed text"),
        ({"segmentation": {"size": [H, W + 1], "counts": "0"}}, "RLE size [60, 101] but image 7"),
    ],
)
def test_results_the_gt_does_not_know_are_one_line_errors(
    tmp_path, gt_json, capsys, change, message
):
    path = tmp_path / "segm.json"
    path.write_text(json.dumps([_result(1, _mask(0, 20), 0.9) | change]))
    out = tmp_path / "segm_eval.json"
    args = ["classify", "evaluate", "--gt", str(gt_json), "--results", str(path), "--out", str(out)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err
    assert not out.exists()


def test_a_result_without_category_is_refused(tmp_path, gt_json):
    result = _result(1, _mask(0, 20), 0.9)
    del result["category_id"]  # AR evaluation takes it, a classifier's AP cannot
    path = tmp_path / "segm.json"
    path.write_text(json.dumps([_result(1, _mask(40, 60), 0.8), result]))
    with pytest.raises(IfcnError, match="result 1 has no category_id"):
        evaluate_segm(gt_json, path, "coco")


def test_mask_nms_keeps_the_best_of_overlapping_segments():
    rles = [_rle(_mask(0, 20)), _rle(_mask(1, 21)), _rle(_mask(50, 70)), _rle(_mask(0, 12))]
    scores = np.array([0.5, 0.9, 0.4, 0.8])
    # 1 beats 0 (IoU 19/21); 3 overlaps 1 with IoU 11/21 = 0.52
    assert mask_nms(rles, scores, 0.5).tolist() == [1, 2]
    assert mask_nms(rles, scores, 0.6).tolist() == [1, 3, 2]
    assert mask_nms([], np.zeros(0), 0.5).shape == (0,)


def test_each_class_is_suppressed_on_its_own_and_the_best_are_kept():
    rles = [_rle(_mask(0, 20)), _rle(_mask(1, 21)), _rle(_mask(50, 70))]
    probs = np.array([[0.1, 0.6, 0.3], [0.2, 0.7, 0.1], [0.5, 0.0005, 0.4995]])
    found = select_detections(probs, rles, score_threshold=0.001, nms_iou=0.3, max_dets=10)
    # class 1: 1 suppresses 0, 2 is under the threshold; class 2: 2, then 0 (1 overlaps 0)
    assert found == [(1, 1, 0.7), (2, 2, 0.4995), (0, 2, 0.3)]
    assert select_detections(probs, rles, 0.001, 0.3, max_dets=2) == found[:2]


def test_voc_region_ap_is_the_area_under_the_hand_computed_pr_curve(tmp_path, gt_json, capsys):
    path = _hand_results(tmp_path)
    out = tmp_path / "segm_eval.json"
    args = ["classify", "evaluate", "--gt", str(gt_json), "--results", str(path), "--out"]
    assert cli_main([*args, str(out), "--ap", "voc"]) == 0
    summary = json.loads(out.read_text())
    # category 1: recall 0.5 at precision 1, recall 1 at precision 2/3: 0.5·1 + 0.5·2/3
    ap1 = 0.5 + 0.5 * 2 / 3
    assert [e["AP@0.5"] for e in summary["per_category"]] == [
        pytest.approx(ap1), pytest.approx(1.0), None
    ]  # fmt: skip
    assert [e["AP@0.7"] for e in summary["per_category"]] == [pytest.approx(ap1), 0.0, None]
    assert summary["mAP@0.5"] == pytest.approx((ap1 + 1) / 2)
    assert summary["ap"] == "voc" and "region AP" in summary["ap_protocol"]
    assert "SDS region AP" in capsys.readouterr().out
    # the protocol is the run's config's classify.ap (the workflow passes only --config)
    config = tmp_path / "config.yaml"
    config.write_text("classify: {ap: voc}\n")
    assert cli_main([*args, str(tmp_path / "b.json"), "--config", str(config)]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["mAP@0.5"] == summary["mAP@0.5"]
    assert cli_main([*args, str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["ap"] == "coco"  # the schema's default


def test_voc11_is_mncs_11_point_ap_on_the_same_hand_computed_curve(tmp_path, gt_json):
    """classify.ap: voc11, the AP of MNC's released evaluation (voc_ap with use_07_metric)."""
    path = _hand_results(tmp_path)
    summary = evaluate_segm(gt_json, path, ap="voc11")
    # category 1: precision 1 up to recall 0.5 (t = 0, 0.1, ..., 0.5: 6 points), then 2/3 up
    # to recall 1 (t = 0.6, ..., 1: 5 points); all-points `voc` gives 0.5 + 0.5 * 2/3 instead
    ap1 = (6 * 1.0 + 5 * 2 / 3) / 11
    assert [e["AP@0.5"] for e in summary["per_category"]] == [
        pytest.approx(ap1), pytest.approx(1.0), None
    ]  # fmt: skip
    assert [e["AP@0.7"] for e in summary["per_category"]] == [pytest.approx(ap1), 0.0, None]
    assert summary["mAP@0.5"] == pytest.approx((ap1 + 1) / 2)
    assert summary["ap"] == "voc11" and "11-point" in summary["ap_protocol"]
    voc = evaluate_segm(gt_json, path, ap="voc")["per_category"][0]["AP@0.5"]
    assert voc == pytest.approx(0.5 + 0.5 * 2 / 3) != pytest.approx(ap1)


def test_voc_takes_each_results_best_mask_where_coco_falls_back_to_the_next(tmp_path):
    """Two GT masks of one class overlap; the second result's best mask is already taken."""
    left, right = _mask(2, 30), _mask(20, 50)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": _rle(m, True),
             "area": int(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0}
            for k, m in enumerate((left, right))
        ],
        "categories": [{"id": 1, "name": "box"}],
    }  # fmt: skip
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(data))
    second_right = _mask(10, 40)  # IoU 20/38 with left (its best, taken), 20/40 with right
    second = _mask(4, 34)  # IoU 26/32 with left (taken), 14/46 with right
    results = [
        {**_result(1, left, 0.9), "image_id": 1},
        {**_result(1, second_right, 0.8), "image_id": 1},
        {**_result(1, second, 0.7), "image_id": 1},
    ]
    path = tmp_path / "segm.json"
    path.write_text(json.dumps(results))
    voc = evaluate_segm(gt, path, ap="voc")["per_category"][0]["AP@0.5"]
    coco = evaluate_segm(gt, path, ap="coco")["per_category"][0]["AP@0.5"]
    # VOC: hit, miss (left taken), miss: recall 0.5 at precision 1 -> AP 0.5
    assert voc == pytest.approx(0.5)
    # COCO: the second result falls back to right (IoU 0.5): recall 1 by the second result
    assert coco == pytest.approx(1.0)


def test_voc_ignores_results_on_crowd_masks_as_on_difficult_objects(tmp_path, gt_json):
    data = json.loads(gt_json.read_text())
    crowd = _mask(70, 95, 0, 8)
    data["annotations"].append(
        {"id": 9, "image_id": 7, "category_id": 1, "segmentation": _rle(crowd, True),
         "area": int(crowd.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 1}
    )  # fmt: skip
    gt = tmp_path / "gt_crowd.json"
    gt.write_text(json.dumps(data))
    results = [
        _result(1, crowd, 0.95),  # on the crowd region: neither true nor false
        _result(1, _mask(0, 20), 0.9),
        _result(1, _mask(40, 60), 0.7),
    ]
    path = tmp_path / "segm.json"
    path.write_text(json.dumps(results))
    assert evaluate_segm(gt, path, ap="voc")["per_category"][0]["AP@0.5"] == pytest.approx(1.0)


def test_coco_ap_is_pycocotools_own(tmp_path, gt_json):
    rng = np.random.default_rng(0)
    results = []
    for _ in range(12):
        x0 = int(rng.integers(0, 70))
        results.append(_result(int(rng.integers(1, 3)), _mask(x0, x0 + 20), float(rng.random())))
    path = tmp_path / "segm.json"
    path.write_text(json.dumps(results))
    summary = evaluate_segm(gt_json, path, ap="coco")
    gt = COCO(str(gt_json))
    evaluator = COCOeval(gt, gt.loadRes(str(path)), iouType="segm")
    evaluator.params.iouThrs = np.array([0.5, 0.7])
    evaluator.params.maxDets = [100]
    evaluator.evaluate()
    evaluator.accumulate()
    for k, entry in enumerate(summary["per_category"][:2]):
        for t, key in enumerate(("AP@0.5", "AP@0.7")):
            assert entry[key] == pytest.approx(evaluator.eval["precision"][t, :, k, 0, -1].mean())


def test_voc_ap_of_a_curve():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)
    assert voc_ap(np.array([0.25, 0.5]), np.array([0.5, 1.0])) == pytest.approx(0.5)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_voc11_ap_of_a_curve():
    """The mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t (0 if none)."""
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc11_ap(recall, precision) == pytest.approx(28 / 33)  # (6 · 1 + 5 · 2/3) / 11
    # recall stops at 0.5: t = 0.6..1 count 0; the best precision beyond counts (not 0.5)
    assert voc11_ap(np.array([0.25, 0.5]), np.array([0.5, 1.0])) == pytest.approx(6 / 11)
    assert voc11_ap(np.zeros(0), np.zeros(0)) == 0.0
