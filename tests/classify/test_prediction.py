"""`ifcn classify predict`: COCO segm results that COCOeval reads, and bad input refused."""

from __future__ import annotations

import json

import pytest
import torch
from pycocotools import mask as mask_utils

from ifcn.cli import main as cli_main


def _predict(classifier, data, out, *extra) -> list[str]:
    return [
        "classify", "predict", "--checkpoint", str(classifier),
        "--proposals", str(data / "val_proposals.h5"), "--images", str(data / "val.json"),
        "--image-root", str(data / "images"), "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def test_results_are_coco_segm_results_of_the_proposals(tmp_path, oracle_data, classifier):
    out = tmp_path / "segm.json"
    args = _predict(classifier, oracle_data, out, "--detections-per-image", "5")
    assert cli_main(args) == 0
    results = json.loads(out.read_text())
    gt = json.loads((oracle_data / "val.json").read_text())
    sizes = {i["id"]: [i["height"], i["width"]] for i in gt["images"]}
    assert results and {r["image_id"] for r in results} <= set(sizes)
    for image_id in sizes:
        mine = [r for r in results if r["image_id"] == image_id]
        assert len(mine) <= 5
        assert [r["score"] for r in mine] == sorted((r["score"] for r in mine), reverse=True)
    for r in results:
        assert set(r) == {"image_id", "category_id", "segmentation", "score"}
        assert r["category_id"] in {c["id"] for c in gt["categories"]}
        assert r["segmentation"]["size"] == sizes[r["image_id"]]
        assert mask_utils.area(r["segmentation"]) > 0
    evaluated = tmp_path / "segm_eval.json"
    args = ["classify", "evaluate", "--gt", str(oracle_data / "val.json")]
    assert cli_main(args + ["--results", str(out), "--out", str(evaluated)]) == 0
    summary = json.loads(evaluated.read_text())
    assert {"mAP@0.5", "mAP@0.7", "per_category"} <= set(summary)
    assert len(summary["per_category"]) == 5


def _per_image(path) -> int:
    counts: dict = {}
    for result in json.loads(path.read_text()):
        counts[result["image_id"]] = counts.get(result["image_id"], 0) + 1
    return max(counts.values())


def test_prediction_settings_come_from_the_runs_config_and_flags_override_them(
    tmp_path, oracle_data, classifier
):
    # the checkpoint's config keeps 100 per image; the run's config asks for 2
    run = tmp_path / "config.yaml"
    run.write_text("classify: {detections_per_image: 2, score_threshold: 0.0}\n")
    out = tmp_path / "segm.json"
    assert cli_main(_predict(classifier, oracle_data, out)) == 0
    assert _per_image(out) > 3
    assert cli_main(_predict(classifier, oracle_data, out, "--config", str(run))) == 0
    assert _per_image(out) == 2
    args = _predict(classifier, oracle_data, out, "--config", str(run))
    assert cli_main([*args, "--detections-per-image", "3"]) == 0
    assert _per_image(out) == 3


def _fails(capsys, args, names) -> str:
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(names) in err, err
    return err


def test_proposals_of_another_image_set_are_refused(tmp_path, oracle_data, classifier, capsys):
    out = tmp_path / "segm.json"
    other = oracle_data / "train_proposals.h5"  # image ids 1..24 again, other images
    args = _predict(classifier, oracle_data, out)
    args[args.index("--proposals") + 1] = str(other)
    err = _fails(capsys, args, other)
    assert "another image set" in err and "train_000001.png" in err
    assert not out.exists()


def test_a_category_the_images_json_does_not_know_is_refused(
    tmp_path, oracle_data, classifier, capsys
):
    data = json.loads((oracle_data / "val.json").read_text())
    data["categories"] = [c for c in data["categories"] if c["id"] != 4]
    images = tmp_path / "val.json"
    images.write_text(json.dumps(data))
    out = tmp_path / "segm.json"
    args = _predict(classifier, oracle_data, out)
    args[args.index("--images") + 1] = str(images)
    err = _fails(capsys, args, images)
    assert "category_id 4" in err
    assert not out.exists()


@pytest.mark.parametrize("which", ["proposal model", "missing"])
def test_a_checkpoint_that_is_not_a_classifier_is_refused(
    tmp_path, oracle_data, classifier, capsys, which
):
    path = tmp_path / "model_final.pt"
    if which == "proposal model":
        torch.save({"model": {}, "config": {}}, path)
    out = tmp_path / "segm.json"
    args = _predict(path, oracle_data, out)
    _fails(capsys, args, path)
    assert not out.exists()


def test_worker_processes_give_the_same_results(tmp_path, oracle_data, classifier):
    alone, workers = tmp_path / "alone.json", tmp_path / "workers.json"
    assert cli_main(_predict(classifier, oracle_data, alone, "--workers", "0")) == 0
    assert cli_main(_predict(classifier, oracle_data, workers, "--workers", "2")) == 0
    assert json.loads(alone.read_text()) == json.loads(workers.read_text())


def test_an_undecodable_image_in_a_worker_is_one_line_naming_it(
    tmp_path, oracle_data, classifier, capsys
):
    images = tmp_path / "images"
    images.mkdir()
    for path in (oracle_data / "images").iterdir():
        (images / path.name).symlink_to(path)
    name = json.loads((oracle_data / "val.json").read_text())["images"][1]["file_name"]
    (images / name).unlink()
    (images / name).write_bytes(b"not an image")
    out = tmp_path / "segm.json"
    args = _predict(classifier, oracle_data, out, "--workers", "1")
    args[args.index("--image-root") + 1] = str(images)
    assert cli_main(args) == 2
    err = capsys.readouterr().err  # after the progress bar, one line
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(images / name) in errors[0], err
    assert "cannot decode image" in errors[0] and "Traceback" not in err
    assert not out.exists()


def test_a_negative_worker_count_is_refused(tmp_path, oracle_data, classifier, capsys):
    out = tmp_path / "segm.json"
    assert cli_main(_predict(classifier, oracle_data, out, "--workers", "-1")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ifcn classify predict: error: --workers: -1 is less than the minimum of 0"
    assert not out.exists()
