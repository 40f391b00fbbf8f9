"""`ifcn evaluate` (DESIGN §8): equals COCOeval; best matching and sizes by hand; bad input."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ifcn import cli
from ifcn.data.rle import encode_counts
from ifcn.errors import IfcnError
from ifcn.evaluation.ar import evaluate
from ifcn.evaluation.recall import COCO_IOU_THRESHOLDS
from ifcn.proposals.format import write_proposals
from tests.configs import settings
from tests.tmpfs import tmpfs

ATTRS = {
    "config": {},
    "checkpoint_sha256": "0" * 64,
    "dataset": "t",
    "scales": [1.0],
    "k": 5,
    "m": 21,
}
MAX_DETS = [10, 100, 1000]


def box_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 1
    return mask


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(mask.shape), "counts": encoded["counts"].decode()}


def annotation(ann_id, image_id, mask, category=1, iscrowd=0, polygon=None) -> dict:
    h, w = mask.shape
    segmentation = polygon if polygon is not None else rle(mask)
    area = (
        mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygon, h, w)))
        if polygon
        else mask.sum()
    )
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "area": float(area),
        "iscrowd": iscrowd,
    }


def result(image_id, mask, score, category=1) -> dict:
    return {
        "image_id": image_id,
        "category_id": category,
        "segmentation": rle(mask),
        "score": score,
    }


def write_inputs(
    directory: Path, images, annotations, results, categories=(1, 2)
) -> dict[str, Path]:
    """gt.json, results.json and the same proposals as proposals.h5 (score order, stable)."""
    paths = {
        k: directory / n
        for k, n in [("gt", "gt.json"), ("json", "results.json"), ("h5", "proposals.h5")]
    }
    gt = {
        "images": [{"file_name": f"{image['id']}.png", **image} for image in images],
        "annotations": annotations,
        "categories": [{"id": c} for c in categories],
    }
    paths["gt"].write_text(json.dumps(gt))
    paths["json"].write_text(json.dumps(results))
    records = []
    for image in images:
        mine = [r for r in results if r["image_id"] == image["id"]]
        # COCOeval's order: by category, then file order, stably by score
        mine = sorted(mine, key=lambda r: (-r["score"], r["category_id"]))
        records.append(
            {
                "image_id": image["id"],
                "file_name": f"{image['id']}.png",
                "height": image["height"],
                "width": image["width"],
                "scores": np.array([r["score"] for r in mine], np.float32),
                "boxes": np.zeros((len(mine), 4), np.float32),
                "rles": [r["segmentation"]["counts"].encode() for r in mine],
                "scales": np.zeros(len(mine), np.int8),
            }
        )
    write_proposals(paths["h5"], records, ATTRS)
    return paths


def random_dataset(seed: int, directory: Path) -> dict[str, Path]:
    """Crowd GTs, polygons, images without GTs or proposals, tied scores, all three sizes."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for i in range(12):
        h, w = int(rng.integers(100, 140)), int(rng.integers(110, 160))
        image_id = 100 + 7 * i
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.png"})
        boxes = []
        for _ in range(0 if i in (2, 7) else int(rng.integers(1, 9))):
            side = rng.choice([rng.integers(6, 30), rng.integers(35, 90), rng.integers(100, 120)])
            bw = int(min(w, max(3, side * rng.uniform(0.7, 1.3))))
            bh = int(min(h, max(3, side * rng.uniform(0.7, 1.3))))
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            crowd = int(rng.random() < 0.15)
            polygon = None
            if rng.random() < 0.3 and not crowd:
                polygon = [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]]
            mask = box_mask(h, w, x0, y0, x0 + bw, y0 + bh)
            category = int(rng.integers(1, 3))
            annotations.append(
                annotation(len(annotations) + 1, image_id, mask, category, crowd, polygon)
            )
            boxes.append((x0, y0, x0 + bw, y0 + bh))
        if i in (3, 9):
            continue
        for _ in range(int(rng.integers(5, 160))):
            if boxes and rng.random() < 0.6:
                x0, y0, x1, y1 = boxes[rng.integers(len(boxes))] + rng.integers(-4, 5, 4)
            else:
                x0, y0 = rng.integers(0, w), rng.integers(0, h)
                x1, y1 = x0 + rng.integers(3, 80), y0 + rng.integers(3, 80)
            mask = box_mask(h, w, x0, y0, x1, y1)
            mask[0, 0] |= not mask.any()
            score = round(float(rng.random()), 1)  # many ties
            results.append(result(image_id, mask, score, int(rng.integers(1, 3))))
    return write_inputs(directory, images, annotations, results)


def cocoeval_recall(paths: dict[str, Path], max_dets=MAX_DETS) -> np.ndarray:
    """COCOeval's eval['recall'] for proposals (segm, useCats=0), as (T, A, M)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(paths["gt"]))
        coco_eval = COCOeval(gt, gt.loadRes(str(paths["json"])), iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval.eval["recall"][:, 0]


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_matching_equals_cocoeval_on_random_data(tmp_path, seed):
    paths = random_dataset(seed, tmp_path)
    gt = json.loads(paths["gt"].read_text())
    results = json.loads(paths["json"].read_text())
    areas = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]])
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert (areas < 32**2).any() and ((areas > 32**2) & (areas < 96**2)).any()
    assert (areas > 96**2).any()
    assert len({r["score"] for r in results}) < len(results) / 10  # ties
    assert len({a["image_id"] for a in gt["annotations"]}) < len(gt["images"])
    assert len({r["image_id"] for r in results}) < len(gt["images"])
    assert max(sum(r["image_id"] == i["id"] for r in results) for i in gt["images"]) > 100
    reference = cocoeval_recall(paths)
    for source, workers in [("json", 1), ("h5", 1), ("h5", 2)]:
        got = evaluate(
            paths["gt"], paths[source], settings("evaluate", max_dets=MAX_DETS), workers=workers
        ).recall
        assert got.shape == reference.shape
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-9, err_msg=source)
    summary = evaluate(paths["gt"], paths["h5"], settings("evaluate")).summary()
    for m, n in enumerate(MAX_DETS):
        r = reference[:, 0, m]
        assert summary[f"AR@{n}"] == pytest.approx(np.mean(r[r > -1]), abs=1e-12)


def test_iou_ties_go_to_the_later_gt_like_cocoeval(tmp_path):
    # GT 1 and GT 2 overlap detection A equally; B overlaps only GT 1. COCOeval gives A the
    # later GT (2), so B still finds GT 1 free: both GTs are recalled.
    h, w = 40, 60
    gt1, gt2 = box_mask(h, w, 0, 0, 20, 20), box_mask(h, w, 10, 0, 30, 20)
    det_a, det_b = box_mask(h, w, 5, 0, 25, 20), box_mask(h, w, 0, 0, 18, 20)
    images = [{"id": 1, "height": h, "width": w}]
    annotations = [annotation(1, 1, gt1), annotation(2, 1, gt2)]
    paths = write_inputs(
        tmp_path, images, annotations, [result(1, det_a, 0.9), result(1, det_b, 0.8)]
    )
    reference = cocoeval_recall(paths, [1, 2])
    got = evaluate(paths["gt"], paths["h5"], settings("evaluate", max_dets=[1, 2])).recall
    np.testing.assert_allclose(got, reference, atol=1e-9)
    assert got[0, 0, 1] == 1.0  # at IoU 0.5 and N=2 both GTs are found


def test_annotation_id_zero_is_never_recalled_like_cocoeval(tmp_path):
    h, w = 30, 30
    masks = [box_mask(h, w, 0, 0, 10, 10), box_mask(h, w, 15, 15, 30, 30)]
    images = [{"id": 5, "height": h, "width": w}]
    annotations = [annotation(0, 5, masks[0]), annotation(1, 5, masks[1])]
    paths = write_inputs(tmp_path, images, annotations, [result(5, m, 0.5) for m in masks])
    got = evaluate(paths["gt"], paths["json"], settings("evaluate", max_dets=[10]))
    np.testing.assert_allclose(got.recall, cocoeval_recall(paths, [10]), atol=1e-9)
    assert got.recall[0, 0, 0] == 0.5
    assert any("id 0" in note for note in got.notes)


def square_case(directory: Path) -> dict[str, Path]:
    """One 120x120 image with a small (10x10), a medium (40x40) and a large (90x120) GT.

    Detections by rank: 0 is 80% of the small GT (IoU 0.8); 1 is the medium GT exactly; 2 is the
    medium GT plus a 40x10 strip (IoU 0.8); 3 is 60% of the large GT (IoU 0.6). Every other
    detection-GT IoU is below 0.1.
    """
    h = w = 120
    small = box_mask(h, w, 0, 0, 10, 10)
    medium = box_mask(h, w, 60, 0, 100, 40)
    large = box_mask(h, w, 0, 30, 120, 120)
    annotations = [annotation(1, 1, small), annotation(2, 1, medium), annotation(3, 1, large)]
    detections = [
        box_mask(h, w, 0, 0, 10, 8),
        medium,
        box_mask(h, w, 60, 0, 100, 50),
        box_mask(h, w, 0, 30, 120, 84),
    ]
    results = [result(1, m, 1.0 - 0.1 * k) for k, m in enumerate(detections)]
    return write_inputs(directory, [{"id": 1, "height": h, "width": w}], annotations, results)


def test_best_matching_by_hand(tmp_path):
    paths = square_case(tmp_path)
    got = evaluate(
        paths["gt"], paths["h5"], settings("evaluate", max_dets=[1, 2, 4], matching="best")
    )
    t = COCO_IOU_THRESHOLDS
    # best IoU per GT: small 0.8 (rank 0); medium 1.0 (rank 1); large 0.6 (rank 3)
    expected_n1 = (t <= 0.8) / 3
    expected_n2 = ((t <= 0.8).astype(float) + 1) / 3
    expected_n4 = ((t <= 0.8).astype(float) + 1 + (t <= 0.6)) / 3
    np.testing.assert_allclose(got.recall[:, 0, 0], expected_n1)
    np.testing.assert_allclose(got.recall[:, 0, 1], expected_n2)
    np.testing.assert_allclose(got.recall[:, 0, 2], expected_n4)
    assert got.summary()["AR@4"] == pytest.approx(np.mean(expected_n4))
    # recall-vs-IoU curve at IoU 1.00: only the exact medium match, from N=2 on
    np.testing.assert_allclose(got.curve[-1], [0, 1 / 3, 1 / 3])


def test_size_ranges_by_hand(tmp_path):
    paths = square_case(tmp_path)
    got = evaluate(paths["gt"], paths["json"], settings("evaluate", max_dets=[4], matching="best"))
    assert got.area_names == ["all", "small", "medium", "large"]
    assert got.num_gt == {"all": 3, "small": 1, "medium": 1, "large": 1}
    t = COCO_IOU_THRESHOLDS
    np.testing.assert_allclose(got.recall[:, 1, 0], t <= 0.8)  # small: IoU 0.8
    np.testing.assert_allclose(got.recall[:, 2, 0], 1.0)  # medium: exact
    np.testing.assert_allclose(got.recall[:, 3, 0], t <= 0.6)  # large: IoU 0.6
    ar = got.summary()["by_area"]
    assert ar["small"]["4"] == pytest.approx(0.7) and ar["large"]["4"] == pytest.approx(0.3)
    # greedy matching agrees here: every detection matches at most one GT
    coco = evaluate(paths["gt"], paths["json"], settings("evaluate", max_dets=[4]))
    np.testing.assert_allclose(coco.recall, got.recall)
    np.testing.assert_allclose(coco.recall, cocoeval_recall(paths, [4]), atol=1e-9)


def test_size_range_limits_are_inclusive_like_cocoeval(tmp_path):
    h, w = 40, 40
    gt = box_mask(h, w, 0, 0, 32, 32)  # area exactly 32**2: both small and medium
    paths = write_inputs(
        tmp_path, [{"id": 1, "height": h, "width": w}], [annotation(1, 1, gt)], [result(1, gt, 1.0)]
    )
    got = evaluate(paths["gt"], paths["json"], settings("evaluate", max_dets=[1]))
    assert got.num_gt == {"all": 1, "small": 1, "medium": 1, "large": 0}
    np.testing.assert_allclose(got.recall, cocoeval_recall(paths, [1]), atol=1e-9)
    assert got.summary()["by_area"]["large"]["1"] is None  # no GT: COCOeval's -1


def test_first_n_keeps_the_first_image_ids_in_sorted_order(tmp_path):
    h, w = 20, 20
    mask = box_mask(h, w, 0, 0, 10, 10)
    images = [{"id": i, "height": h, "width": w} for i in (30, 10, 20)]
    annotations = [annotation(k + 1, i, mask) for k, i in enumerate((30, 10, 20))]
    paths = write_inputs(tmp_path, images, annotations, [result(10, mask, 1.0)])
    assert (
        evaluate(paths["gt"], paths["json"], settings("evaluate"), first_n=1).recall[0, 0, 0] == 1.0
    )
    assert (
        evaluate(paths["gt"], paths["json"], settings("evaluate"), first_n=2).recall[0, 0, 0] == 0.5
    )
    assert evaluate(paths["gt"], paths["json"], settings("evaluate"), first_n=2).num_images == 2


def test_cli_writes_ar_json_and_the_curve_named_after_it(tmp_path, capsys):
    paths = square_case(tmp_path)
    out = tmp_path / "eval" / "ar.json"
    argv = [
        "evaluate",
        "--gt",
        str(paths["gt"]),
        "--proposals",
        str(paths["h5"]),
        "--out",
        str(out),
    ]
    assert cli.main(argv + ["--max-dets", "1", "4"]) == 0
    report = json.loads(out.read_text())
    assert report["AR@1"] == pytest.approx(np.mean(COCO_IOU_THRESHOLDS <= 0.8) / 3)
    assert set(report["by_area"]) == {"all", "small", "medium", "large"}
    assert len(report["recall"]["4"]) == 10
    assert report["options"]["matching"] == "coco" and report["num_images"] == 1
    assert set(report["inputs"]) == {str(paths["gt"]), str(paths["h5"])}
    assert all(len(digest) == 64 for digest in report["inputs"].values())
    assert report["outputs"] == {"recall_iou_csv": "ar.recall_iou.csv",
                                 "recall_iou_png": "ar.recall_iou.png"}  # fmt: skip
    csv_lines = (out.parent / "ar.recall_iou.csv").read_text().splitlines()
    assert csv_lines[0] == "iou,recall@1,recall@4" and len(csv_lines) == 52
    assert csv_lines[1].startswith("0.50,") and csv_lines[-1].startswith("1.00,")
    assert (out.parent / "ar.recall_iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "ar.json",
        "ar.recall_iou.csv",
        "ar.recall_iou.png",
    ]
    table = capsys.readouterr().out
    assert "AR@4" in table and "medium" in table and len(table.splitlines()) < 25
    # a second evaluation in the folder keeps its own curve, and leaves the first's alone
    first_csv = (out.parent / "ar.recall_iou.csv").read_text()
    assert run_cli(paths, "json", out.parent / "ar_json", "--max-dets", "1") == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "ar.json",
        "ar.recall_iou.csv",
        "ar.recall_iou.png",
        "ar_json",
        "ar_json.recall_iou.csv",
        "ar_json.recall_iou.png",
    ]
    assert (out.parent / "ar.recall_iou.csv").read_text() == first_csv
    assert (out.parent / "ar_json.recall_iou.csv").read_text().startswith("iou,recall@1\n")


def test_out_ending_in_a_slash_is_a_folder_and_refused(tmp_path, capsys):
    paths = square_case(tmp_path)
    out = tmp_path / "eval" / "ar.json"
    assert run_cli(paths, "h5", f"{out}/") == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"ifcn evaluate: error: {out}/: ends in '/', which names a folder; give the "
        "name of the file to write"
    ), err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("where", ["csv", "png", "json"])
def test_a_failure_while_writing_leaves_all_outputs_or_none(tmp_path, capsys, monkeypatch, where):
    import os

    from ifcn.evaluation import ar as ar_module
    from ifcn.reporting import plots

    paths = square_case(tmp_path)
    out = tmp_path / "eval" / "ar.json"
    assert run_cli(paths, "h5", out, "--max-dets", "1") == 0  # an earlier evaluation's
    earlier = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert len(earlier) == 3

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    replace = os.replace

    def rename(source, target):  # the last rename of the set fails
        if Path(target).name == "ar.json":
            full()
        replace(source, target)

    if where == "csv":
        monkeypatch.setattr(ar_module, "_write_csv", full)
    elif where == "png":
        monkeypatch.setattr(plots, "save_png", full)  # in the plotting process too (forked)
    else:
        monkeypatch.setattr(ar_module.os, "replace", rename)
    assert run_cli(paths, "h5", out, "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err
    left = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert left == (earlier if where != "json" else {}), sorted(left)  # never a mix


def _ifcn(*args: object, limit: int | None = None, timeout: int = 300):
    """`python -m ifcn` in a process of its own (optionally with RLIMIT_FSIZE `limit` bytes)."""
    import os
    import resource

    def limits() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "ifcn", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(root)}, cwd=root, timeout=timeout,
        preexec_fn=limits,
    )  # fmt: skip


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root), unmounted afterwards."""
    with tmpfs(tmp_path / "disk", "size=64k") as mount:
        yield mount


def test_a_full_disk_while_evaluate_writes_leaves_nothing(tmp_path, small_disk):
    paths = square_case(tmp_path)
    (small_disk / "filler").write_bytes(b"\0" * (40 << 10))  # room for the CSV, not the PNG
    done = _ifcn("evaluate", "--gt", paths["gt"], "--proposals", paths["h5"], "--out",
                 small_disk / "ar.json", "--workers", "1")  # fmt: skip
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(err) == 1 and "No space left" in err[0], done.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_file_size_limit_while_evaluate_writes_leaves_nothing(tmp_path):
    paths = square_case(tmp_path)
    out = tmp_path / "eval" / "ar.json"
    done = _ifcn("evaluate", "--gt", paths["gt"], "--proposals", paths["h5"], "--out", out,
                 "--workers", "1", limit=8 << 10)  # fmt: skip  # the CSV fits, the PNG does not
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(err) == 1 and "File too large" in err[0], done.stderr
    assert str(out.parent / "ar.recall_iou.png") in err[0]
    assert list(out.parent.iterdir()) == []


def run_cli(paths: dict[str, Path], source: str, out: Path | str, *extra: str) -> int:
    argv = [
        "evaluate",
        "--gt",
        str(paths["gt"]),
        "--proposals",
        str(paths[source]),
        "--out",
        str(out),
    ]
    return cli.main(argv + list(extra))


def test_gt_json_without_annotations_is_a_one_line_error(tmp_path, capsys):
    paths = square_case(tmp_path)
    paths["gt"].write_text(json.dumps({"images": [], "categories": []}))
    assert run_cli(paths, "h5", tmp_path / "ar.json") == 2
    err = capsys.readouterr().err.strip()
    assert "gt.json" in err and "'annotations'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ar.json").exists()


def test_proposals_for_images_the_gt_lacks(tmp_path, capsys):
    paths = square_case(tmp_path)
    results = json.loads(paths["json"].read_text())
    results.append({**results[0], "image_id": 77})
    paths["json"].write_text(json.dumps(results))
    assert run_cli(paths, "json", tmp_path / "ar.json") == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "1 image ids" in err and "77" in err
    assert not (tmp_path / "ar.json").exists()
    assert run_cli(paths, "json", tmp_path / "ar.json", "--allow-missing") == 0
    assert "warning: skipped proposals for 1 image ids" in capsys.readouterr().err
    assert json.loads((tmp_path / "ar.json").read_text())["skipped_images"] == 1


def test_h5_lacking_evaluated_images_needs_allow_missing(tmp_path, capsys):
    paths = square_case(tmp_path)
    gt = json.loads(paths["gt"].read_text())
    gt["images"].append({"id": 2, "height": 120, "width": 120, "file_name": "2.png"})
    paths["gt"].write_text(json.dumps(gt))
    assert run_cli(paths, "h5", tmp_path / "ar.json") == 2
    assert "no entry for 1 of the 2 evaluated images" in capsys.readouterr().err
    assert run_cli(paths, "h5", tmp_path / "ar.json", "--allow-missing") == 0


@pytest.mark.parametrize("source", ["json", "h5"])
def test_rle_of_the_wrong_size_is_a_one_line_error(tmp_path, capsys, source):
    paths = square_case(tmp_path)
    gt = json.loads(paths["gt"].read_text())
    gt["images"][0]["height"] = 140
    for ann in gt["annotations"]:  # keep the GT itself consistent
        mask = mask_utils.decode({**ann["segmentation"]})
        ann["segmentation"] = rle(np.pad(mask, ((0, 20), (0, 0))))
    paths["gt"].write_text(json.dumps(gt))
    assert run_cli(paths, source, tmp_path / "ar.json") == 2
    err = capsys.readouterr().err.strip()
    assert paths[source].name in err and "140x120" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ar.json").exists()


def test_results_json_with_a_category_the_gt_lacks_is_refused(tmp_path):
    paths = square_case(tmp_path)
    results = json.loads(paths["json"].read_text())
    results[2]["category_id"] = 9
    paths["json"].write_text(json.dumps(results))
    with pytest.raises(IfcnError, match="result 2: category_id 9"):
        evaluate(paths["gt"], paths["json"], settings("evaluate"))


def test_evaluate_and_proposals_io_do_not_import_torch():
    code = (
        "import sys, ifcn.commands.evaluate, ifcn.proposals.format, ifcn.proposals.export;"
        " print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_proposals_at_all_gives_zero_recall_like_cocoeval(tmp_path):
    paths = square_case(tmp_path)
    paths["json"].write_text("[]")
    got = evaluate(paths["gt"], paths["json"], settings("evaluate", max_dets=[10]))
    assert (got.recall == 0).all() and got.images_without_proposals == 1
    assert got.summary()["AR@10"] == 0.0


def _mutate_first(key: str, value):
    def mutate(results: list) -> None:
        target = results[0]
        *keys, last = key.split(".")
        for k in keys:
            target = target[k]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


_DELETE = object()
BAD_RESULTS = {
    "D6 image_id 1.7": (_mutate_first("image_id", 1.7), "result 0: image_id 1.7 is not an integer"),
    "image_id 1.0": (_mutate_first("image_id", 1.0), "image_id 1.0 is not an integer"),
    "image_id string": (_mutate_first("image_id", "1"), "image_id '1' is not an integer"),
    "image_id bool": (_mutate_first("image_id", True), "image_id True is not an integer"),
    "image_id list": (_mutate_first("image_id", [1]), "image_id [1] is not an integer"),
    "image_id missing": (_mutate_first("image_id", _DELETE), "image_id None is not"),
    "score string": (_mutate_first("score", "0.9"), "score '0.9' is not a finite number"),
    "score bool": (_mutate_first("score", True), "score True is not a finite number"),
    "score missing": (_mutate_first("score", _DELETE), "score None is not a finite number"),
    "score huge": (_mutate_first("score", 1e400), "not valid JSON"),
    "category float": (_mutate_first("category_id", 1.0), "category_id 1.0 is not in"),
    "segmentation missing": (_mutate_first("segmentation", _DELETE), "not a compressed RLE"),
    "counts list": (_mutate_first("segmentation.counts", [0, 5]), "not a compressed RLE"),
    "counts empty": (_mutate_first("segmentation.counts", ""), "not a compressed RLE"),
    "size floats": (_mutate_first("segmentation.size", [120.0, 120.0]), "is not [height, width]"),
    "size short": (_mutate_first("segmentation.size", [120]), "is not [height, width]"),
    "size wrong": (_mutate_first("segmentation.size", [120, 121]), "but image 1 is 120x120"),
}


@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_bad_results_json_is_a_one_line_error_naming_the_result(tmp_path, capsys, case):
    mutate, expected = BAD_RESULTS[case]
    paths = square_case(tmp_path)
    results = json.loads(paths["json"].read_text())
    mutate(results)
    text = json.dumps(results).replace("Infinity", "1e400")
    paths["json"].write_text(text)
    out = tmp_path / "eval" / "ar.json"
    assert run_cli(paths, "json", out) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"ifcn evaluate: error: {paths['json']}: ") and expected in err, err
    assert not out.parent.exists()


@pytest.mark.parametrize("text", ["{}", "[1, 2]", '[{"image_id": 1}]', "not json"])
def test_results_json_of_another_shape_is_a_one_line_error(tmp_path, capsys, text):
    paths = square_case(tmp_path)
    paths["json"].write_text(text)
    assert run_cli(paths, "json", tmp_path / "ar.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(paths["json"]) in err, err


@pytest.mark.parametrize("workers", ["-1", "0"])
def test_workers_below_one_is_a_one_line_error(tmp_path, capsys, workers):
    paths = square_case(tmp_path)
    assert run_cli(paths, "h5", tmp_path / "eval" / "ar.json", "--workers", workers) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ifcn evaluate: error: --workers must be at least 1, got {workers}"
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("scores", [[0.5, float("nan")], [0.2, 0.9]])
def test_h5_scores_not_finite_or_not_descending_are_refused(tmp_path, capsys, scores):
    import h5py

    paths = square_case(tmp_path)
    with h5py.File(paths["h5"], "r+") as f:
        column = f["proposals/score"]
        column[: len(scores)] = scores
    assert run_cli(paths, "h5", tmp_path / "ar.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image 1: scores" in err, err


def test_h5_rle_text_cut_short_is_refused(tmp_path, capsys):
    paths = square_case(tmp_path)
    # the writer refuses such text: damage the file behind its back
    with h5py.File(paths["h5"], "r+") as f:
        row = int(f["images/offset"][list(f["images/id"][:]).index(1)]) + 2
        text = f["proposals/rle"][row]
        f["proposals/rle"][row] = text[:-1] + b"o"  # 'o' continues a number that never ends
    assert run_cli(paths, "h5", tmp_path / "ar.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image 1" in err[0] and "RLE" in err[0], err


@pytest.mark.parametrize("category", [-1, None, 0])
def test_a_category_id_the_gt_lacks_is_refused_whatever_its_value(tmp_path, category):
    paths = square_case(tmp_path)
    results = json.loads(paths["json"].read_text())
    results[1]["category_id"] = category
    paths["json"].write_text(json.dumps(results))
    with pytest.raises(IfcnError, match=f"result 1: category_id {category} is not in"):
        evaluate(paths["gt"], paths["json"], settings("evaluate"))


def test_results_without_category_id_are_scored(tmp_path):
    paths = square_case(tmp_path)
    results = json.loads(paths["json"].read_text())
    for r in results:
        del r["category_id"]
    paths["json"].write_text(json.dumps(results))
    got = evaluate(paths["gt"], paths["json"], settings("evaluate", max_dets=[10]))
    want = evaluate(paths["gt"], paths["h5"], settings("evaluate", max_dets=[10]))
    np.testing.assert_array_equal(got.recall, want.recall)


# --- proposals of other images, masks whose runs miss the image (issue 23) ----------------------


def test_proposals_of_other_images_with_the_same_ids_and_sizes_are_refused(tmp_path, capsys):
    paths = square_case(tmp_path)
    gt = json.loads(paths["gt"].read_text())
    gt["images"][0]["file_name"] = "other.jpg"  # same id, same size: another photo
    other = tmp_path / "other.json"
    other.write_text(json.dumps(gt))
    assert run_cli({**paths, "gt": other}, "h5", tmp_path / "ar.json") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ifcn evaluate: error: {paths['h5']}: image 1 is '1.png' here but 'other.jpg' in "
        f"{other}: proposals of other images?"
    ), err
    assert not (tmp_path / "ar.json").exists()
    # an equivalent JSON (other bytes, the same images) is fine, and says nothing
    gt["images"][0]["file_name"] = "1.png"
    other.write_text(json.dumps(gt, indent=1))
    assert run_cli({**paths, "gt": other}, "h5", tmp_path / "ar.json") == 0
    assert capsys.readouterr().err == ""


def test_a_gt_changed_since_the_proposals_were_made_gets_a_note(tmp_path, capsys):
    paths = square_case(tmp_path)
    with h5py.File(paths["h5"], "r+") as f:  # what infer records: the GT file and its hash
        f.attrs["dataset"] = str(paths["gt"])
        f.attrs["dataset_sha256"] = hashlib.sha256(paths["gt"].read_bytes()).hexdigest()
    assert run_cli(paths, "h5", tmp_path / "ar.json") == 0
    assert capsys.readouterr().err == ""
    gt = json.loads(paths["gt"].read_text())
    gt["annotations"] = gt["annotations"][:2]  # an annotation dropped: the images agree
    paths["gt"].write_text(json.dumps(gt))
    assert run_cli(paths, "h5", tmp_path / "ar.json") == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"note: {paths['h5']} was made from {paths['gt']} when its SHA-256 was")
    assert "its images agree by id, size and file name" in err and len(err.splitlines()) == 1


def _rle_text(counts: list[int]) -> str:
    """COCO compressed RLE text of any run lengths, negative ones included."""
    return encode_counts(np.array(counts), np.array([len(counts)]))[0].decode()


# runs of a 120x120 image over the medium GT (rows 0..40 of columns 60..100), a run missing;
# and runs adding up to the image with a negative one (pycocotools reads it as 2**32 - 5)
SHORT_RUNS = [60 * 120] + [40, 80] * 39 + [40]
NEGATIVE_RUN = [60 * 120, -5, 45] + [80, 40] * 39 + [120 * 120 - 60 * 120 - 40 * 40 - 80 * 39]


@pytest.mark.parametrize("source", ["json", "h5"])
@pytest.mark.parametrize("counts", [SHORT_RUNS, NEGATIVE_RUN], ids=["short", "negative"])
def test_a_mask_whose_runs_miss_the_image_is_refused_not_looped_on(tmp_path, source, counts):
    paths = square_case(tmp_path)
    text = _rle_text(counts)
    if source == "json":
        results = json.loads(paths["json"].read_text())
        results[1]["segmentation"]["counts"] = text
        paths["json"].write_text(json.dumps(results))
    else:  # the writer refuses it: damage the file behind its back
        with h5py.File(paths["h5"], "r+") as f:
            rles = f["proposals/rle"][:].tolist()
            rles[1] = text.encode()
            del f["proposals/rle"]
            f["proposals/rle"] = np.array(rles, dtype=f"S{max(map(len, rles))}")
    out = tmp_path / "ar.json"
    done = _ifcn("evaluate", "--gt", paths["gt"], "--proposals", paths[source], "--out", out,
                 "--workers", "2", timeout=120)  # fmt: skip  # pycocotools' IoU never returned
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(err) == 1, done.stderr
    where = "result 1: " if source == "json" else "image 1: the mask of row 1: "
    assert f"{paths[source]}: {where}" in err[0], err
    assert ("negative run" if counts is NEGATIVE_RUN else "pixels") in err[0], err
    assert not out.exists()


def test_mask_ious_leave_out_only_pairs_below_one_half():
    from ifcn.data.rle import run_stats
    from ifcn.evaluation.ar import mask_ious

    rng = np.random.default_rng(4)
    h, w = 60, 80
    gts = [box_mask(h, w, *rng.integers(0, 40, 2), *rng.integers(40, 80, 2)) for _ in range(6)]
    dts = []
    for _ in range(400):  # GTs shifted, grown, shrunk, cut: many pairs near IoU 1/2
        mask = gts[rng.integers(len(gts))].copy()
        mask = np.roll(mask, rng.integers(-12, 13, 2), axis=(0, 1))
        if rng.random() < 0.5:
            mask[rng.integers(h) :, :] = 0
        if rng.random() < 0.3:
            mask |= box_mask(h, w, *rng.integers(0, 80, 4))
        dts.append(mask)
    dts.append(np.zeros((h, w), np.uint8))  # an empty mask
    dt_rles = [{"size": [h, w], "counts": rle(m)["counts"].encode()} for m in dts]
    gt_rles = [rle(m) for m in gts]
    full = np.asarray(mask_utils.iou(dt_rles, gt_rles, np.zeros(len(gts), np.uint8)))
    masks = run_stats([r["counts"] for r in dt_rles])
    got = mask_ious(dt_rles, masks, gt_rles, h)
    near = (full >= 0.4) & (full < 0.6)
    left_out = (got == 0) & (full > 0)  # pairs pycocotools' IoU would have scanned
    assert near.sum() > 50 and left_out.sum() > 50, (near.sum(), left_out.sum())
    computed = got > 0
    assert np.array_equal(got[computed], full[computed])  # the same bits
    assert np.array_equal(got >= 0.5, full >= 0.5)  # and nothing that matters left out
    assert np.array_equal(got[full >= 0.5], full[full >= 0.5])
