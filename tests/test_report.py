"""report.md: tables from the run's own files, paper rows labelled, pictures linked and drawn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import report
from ifcn.checkpoint import save_atomic
from ifcn.config import load_config, validate_config
from ifcn.errors import IfcnError
from ifcn.model import build_model
from ifcn.pictures import best_proposals, draw_recall_picture
from ifcn.proposals.format import write_proposals
from ifcn.report import build_report, mask_layer_parameters


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 128, np.uint8))
    return path


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """results/<run>/ with a fabricated ar.json, its plot and the two ablation tables."""
    run = tmp_path / "results" / "demo"
    ar = {
        "AR@10": 0.2346,
        "AR@100": 0.4567,
        "AR@1000": 0.5012,
        "matching": "coco",
        "by_area": {"small": {"10": None, "100": 0.1, "1000": 0.2}},
        "num_images": 12,
        "num_gt": {"all": 40},
    }
    (run / "val").mkdir(parents=True)
    (run / "val" / "ar.json").write_text(json.dumps(ar))
    _png(run / "val" / "recall_iou.png")
    pd.DataFrame(
        {"variant": ["k=1", "k=5"], "AR@10": [0.111, 0.222], "AR@100": [0.3, 0.4],
         "AR@1000": [0.35, 0.45]}
    ).to_csv(run / "ablation_k.csv", index=False)  # fmt: skip
    _png(run / "ablation_k.png")
    pd.DataFrame(
        {"variant": ["instancefcn-full", "deepmask-full"], "AR@10": [0.25, 0.15],
         "AR@100": [0.41, 0.31], "AR@1000": [0.5, 0.4]}
    ).to_csv(run / "ablation_head.csv", index=False)  # fmt: skip
    return run


def _config(**model) -> dict:
    return validate_config({"run": "demo", "model": {"head_channels": 16, **model}})


def test_report_shows_the_runs_figures_and_labelled_paper_rows(run_dir):
    text = build_report(
        _config(),
        run_dir / "val" / "ar.json",
        run_dir / "report.md",
        ablation_k=run_dir / "ablation_k.csv",
        ablation_head=run_dir / "ablation_head.csv",
        figures=[_png(run_dir / "figures" / "extra.png")],
    )
    assert "| this run | 23.5 | 45.7 | 50.1 |" in text  # from ar.json, in percent
    assert "on 12 images, 40 objects" in text
    assert "| small | – | 10.0 | 20.0 |" in text
    assert "| k=1 | 11.1 | 30.0 | 35.0 | – |" in text
    assert "| k=5 | 22.2 | 40.0 | 45.0 | 38.9 / 49.7 / 52.6 |" in text  # paper Table 1
    assert "| deepmask-full | 15.0 | 31.0 | 40.0 | – |" in text
    assert "| instancefcn-full | 25.0 | 41.0 | 50.0 | 38.9 / 49.7 / 52.6 |" in text
    assert "paper, VOC 2012 val" in text and "model.k=1" in text
    links = _links(text)
    assert links == ["val/recall_iou.png", "ablation_k.png", "figures/extra.png"]
    for link in links:
        assert (run_dir / link).exists(), link


def test_report_without_ablations_has_no_ablation_section(run_dir):
    text = build_report(_config(), run_dir / "val" / "ar.json", run_dir / "report.md")
    assert "Ablation" not in text and "## Mask-prediction parameters" in text


def test_report_names_a_missing_table(run_dir):
    with pytest.raises(IfcnError, match="nothing.csv: file not found"):
        build_report(
            _config(), run_dir / "val" / "ar.json", run_dir / "r.md", ablation_k="nothing.csv"
        )


def test_mask_parameters_are_counted_on_the_built_modules():
    rows = mask_layer_parameters(_config(k=3, head_channels=128)["model"])
    counts = {(r["setting"], r["head"]): (r["weights"], r["biases"]) for r in rows}
    ours, theirs = (
        counts[("paper setting, 512 channels", "InstanceFCN (k = 5)")],
        counts[("paper setting, 512 channels", "~DeepMask")],
    )
    assert sum(ours) == 512 * 3 * 3 * 25 + 25  # the paper's 0.1M
    assert theirs[0] == 512 * 14 * 14 * 512 + 512 * 56**2  # the paper's 53M
    assert theirs[1] == 512 + 56**2
    assert counts[("this run, 128 channels", "InstanceFCN (k = 3)")] == (128 * 3 * 3 * 9, 9)
    assert counts[("this run, 128 channels", "~DeepMask")][0] == 128 * 14 * 14 * 128 + 128 * 56**2


def test_report_prints_the_counted_parameters(run_dir):
    text = build_report(_config(), run_dir / "val" / "ar.json", run_dir / "report.md")
    assert f"{512 * 14 * 14 * 512 + 512 * 56**2:,}" in text
    assert f"{512 * 3 * 3 * 25:,}" in text and "Paper (published): ~DeepMask fc layers 53M" in text


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_best_proposal_per_object_and_missed_ones_are_drawn_as_fig8():
    objects = np.zeros((2, 40, 60), np.uint8)
    objects[0, 5:25, 5:25] = 1
    objects[1, 10:30, 35:55] = 1
    proposals = np.zeros((3, 40, 60), np.uint8)
    proposals[0, 5:25, 5:23] = 1  # IoU 0.9 with object 0
    proposals[1, 0:10, 30:60] = 1  # touches object 1 only a little
    proposals[2, 5:25, 5:15] = 1  # IoU 0.5 with object 0
    best, ious = best_proposals([_rle(m) for m in objects], [_rle(m) for m in proposals])
    assert best[0] == 0 and ious[0] == pytest.approx(0.9)
    assert ious[1] < 0.5
    image = np.full((40, 60, 3), 60, np.uint8)
    picture = draw_recall_picture(image, objects, proposals[best], ious)
    assert picture[20, 45].min() > 200  # the missed object is filled with white
    assert tuple(picture[10, 35]) == (230, 0, 0)  # and outlined in red
    assert not np.array_equal(picture[15, 10], image[15, 10])  # the found one is tinted
    empty_best, empty_ious = best_proposals([_rle(objects[0])], [])
    assert empty_best.tolist() == [-1] and empty_ious.tolist() == [0.0]


def test_cli_report_draws_and_links_the_pictures(tmp_path, run_dir, capsys):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}
    masks = {}
    for image_id in (3, 5, 8):
        Image.fromarray((rng.random((56, 72, 3)) * 255).astype(np.uint8)).save(
            images / f"{image_id}.png"
        )
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.png", "height": 56,
                               "width": 72})  # fmt: skip
        if image_id == 3:  # an image without objects is drawn after those with objects
            continue
        mask = np.zeros((56, 72), np.uint8)
        mask[10:40, 10:40] = 1
        masks[image_id] = mask
        rle = _rle(mask)
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
        coco["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1,
                                    "iscrowd": 0, "area": 900, "bbox": [10, 10, 30, 30],
                                    "segmentation": segmentation})  # fmt: skip
    images_json = tmp_path / "val.json"
    images_json.write_text(json.dumps(coco))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "run": "demo",
        "data": {"val_images": str(images), "val_json": str(images_json)},
        "model": {"backbone": "tiny", "k": 3, "m": 9, "head_channels": 8},
        "infer": {"scales": [40, 64], "max_size": 120},
        "report": {"pictures": 2},
    }))  # fmt: skip
    config = load_config(config_path)
    torch.manual_seed(0)
    checkpoint = save_atomic(
        {"model": build_model(config["model"]).state_dict(), "config": config, "iteration": 0},
        tmp_path / "model_final.pt",
    )
    records = []
    for image_id in (3, 5, 8):
        found = masks.get(image_id, np.zeros((56, 72), np.uint8))
        records.append({"image_id": image_id, "file_name": f"{image_id}.png", "height": 56,
                        "width": 72, "scores": np.array([0.9]),
                        "boxes": np.array([[10, 10, 40, 40]], np.float32),
                        "rles": [_rle(found)["counts"]], "scales": np.array([0])})  # fmt: skip
    proposals = tmp_path / "proposals.h5"
    write_proposals(proposals, records, {"config": config, "checkpoint_sha256": "0" * 64,
                    "dataset": str(images_json), "scales": [40, 64], "k": 3, "m": 9})  # fmt: skip
    out = run_dir / "report.md"
    args = report.get_args_parser().parse_args([
        "--config", str(config_path), "--ar", str(run_dir / "val" / "ar.json"),
        "--proposals", str(proposals), "--checkpoint", str(checkpoint),
        "--images", str(images_json), "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    assert report.main(args) == 0
    text = out.read_text()
    expected = [
        "figures/proposals-1.png",
        "figures/score_maps-1.png",
        "figures/proposals-2.png",
        "figures/score_maps-2.png",
    ]
    assert [link for link in _links(text) if link.startswith("figures/")] == expected
    for link in _links(text):
        assert (run_dir / link).is_file(), link
    assert "Image 5 (`5.png`)" in text and "Image 8 (`8.png`)" in text and "Image 3" not in text
    assert "0 missed" in text
    assert cv2.imread(str(run_dir / "figures" / "proposals-1.png")).shape == (56, 72, 3)
    assert not list(run_dir.glob(".*.tmp")) and not list((run_dir / "figures").glob(".*"))
