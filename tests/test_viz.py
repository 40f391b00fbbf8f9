"""Pictures: proposals on the image, and score maps with assembled instances (paper Fig. 5)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import cli
from ifcn.checkpoint import save_atomic
from ifcn.config import load_config
from ifcn.model import build_model
from ifcn.pictures import distinct_colours, draw_proposals, draw_score_maps
from ifcn.proposals.format import write_proposals


def test_draw_proposals_tints_each_mask_in_its_own_colour():
    image = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 30:55, 5:30] = 1
    masks[1, 30:55, 45:75] = 1
    out = draw_proposals(image, masks, np.array([0.9, 0.4]), alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    colours = distinct_colours(2).astype(int)
    assert len({tuple(c) for c in colours}) == 2
    for i, (y, x) in enumerate([(45, 15), (45, 60)]):  # inside, away from outline and label
        np.testing.assert_allclose(out[y, x], (100 + colours[i]) / 2, atol=1)
    np.testing.assert_array_equal(out[5, 40], image[5, 40])  # outside every mask


def test_distinct_colours_beyond_the_palette_differ():
    colours = distinct_colours(25)
    assert colours.shape == (25, 3) and len({tuple(c) for c in colours}) == 25


def test_draw_score_maps_gives_one_picture_with_a_k_by_k_grid():
    rng = np.random.default_rng(0)
    picture = draw_score_maps(
        (rng.random((64, 80, 3)) * 255).astype(np.uint8),
        rng.random((9, 8, 10)),
        rng.random((2, 21, 21)),
        np.array([[0, 0, 40, 40], [20, 10, 70, 60]], np.float32),
        np.array([0.9, 0.7]),
    )
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8
    assert picture.shape[0] > 200 and picture.shape[1] > picture.shape[0]
    assert picture.std() > 10  # something was drawn


def test_cli_viz_writes_both_pictures(tmp_path, capsys):
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((rng.random((56, 72, 3)) * 255).astype(np.uint8)).save(images / "a.png")
    coco = {"images": [{"id": 4, "file_name": "a.png", "height": 56, "width": 72}],
            "annotations": [], "categories": []}  # fmt: skip
    json_path = tmp_path / "val.json"
    json_path.write_text(json.dumps(coco))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "data": {"val_images": str(images)},
        "model": {"backbone": "tiny", "k": 3, "m": 9, "head_channels": 8},
        "infer": {"scales": [40, 64], "max_size": 120},
    }))  # fmt: skip
    config = load_config(config_path)
    torch.manual_seed(0)
    checkpoint = save_atomic(
        {"model": build_model(config["model"]).state_dict(), "config": config, "iteration": 0},
        tmp_path / "model_final.pt",
    )
    masks = np.zeros((56, 72, 2), np.uint8, order="F")
    masks[5:30, 5:40, 0] = 1
    masks[20:50, 30:70, 1] = 1
    rles = [r["counts"] for r in mask_utils.encode(masks)]
    proposals = tmp_path / "proposals.h5"
    record = {"image_id": 4, "file_name": "a.png", "height": 56, "width": 72,
              "scores": np.array([0.8, 0.6]), "boxes": np.array([[5, 5, 40, 30], [30, 20, 70, 50]]),
              "rles": rles, "scales": np.array([0, 1])}  # fmt: skip
    write_proposals(proposals, [record], {"config": config, "checkpoint_sha256": "0" * 64,
                    "dataset": str(json_path), "scales": [40, 64], "k": 3, "m": 9})  # fmt: skip
    out = tmp_path / "viz"
    base = ["viz", "--config", str(config_path), "--checkpoint", str(checkpoint),
            "--images", str(json_path), "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert cli.main([*base, "--image-id", "4", "--proposals", str(proposals)]) == 0
    drawn = cv2.imread(str(out / "image4_proposals.png"))
    assert drawn.shape == (56, 72, 3)
    assert cv2.imread(str(out / "image4_score_maps.png")).shape[0] > 200
    capsys.readouterr()
    assert cli.main([*base, "--image-id", "5"]) == 2
    assert "no image with id 5" in capsys.readouterr().err
