"""Oracle proposals for the classifier tests (jittered GT masks plus background segments) and
their config."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import yaml
from pycocotools import mask as mask_utils

from ifcn.data.masks import mask_boxes
from ifcn.proposals.format import write_proposals

ROOT = Path(__file__).resolve().parents[2]
# Small and fast: images at their own size (128-160 px), narrow fc layers, no worker processes.
CLASSIFY = {
    "scales": [160],
    "test_scale": 160,
    "max_size": 200,
    "fc_dim": 128,
    "workers": 0,
    "warmup_iters": 20,
}
ATTRS = {
    "config": {},
    "checkpoint_sha256": "0" * 64,
    "dataset": "oracle",
    "scales": [1],
    "k": 5,
    "m": 21,
}


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _jitters(mask: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Near copies (mask IoU mostly ≥ 0.5) and hard negatives (a shifted copy, a sliver)."""
    kernel = np.ones((3, 3), np.uint8)
    x0, y0, x1, y1 = mask_boxes(mask[None])[0].astype(int)
    side = max(x1 - x0, y1 - y0)
    near = [
        cv2.dilate(mask, kernel, iterations=int(rng.integers(1, 3))),
        cv2.erode(mask, kernel, iterations=int(rng.integers(1, 3))),
        _shift(mask, *(int(v) for v in rng.integers(-3, 4, 2))),
    ]
    away = int(side * rng.uniform(0.45, 0.7)) * int(rng.choice([-1, 1]))
    sliver = mask.copy()
    sliver[:, x0 + (x1 - x0) // 3 :] = 0
    far = [_shift(mask, away, 0), _shift(mask, 0, away), sliver]
    return near + far


def _random_blobs(h: int, w: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    blobs = []
    for _ in range(count):
        mask = np.zeros((h, w), np.uint8)
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(8, w // 3)), int(rng.integers(8, h // 3)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        blobs.append(mask)
    return blobs


def write_oracle_proposals(gt_json: Path, out: Path, seed: int) -> Path:
    """proposals.h5 of the GT's images: jittered GT masks and background segments, random
    scores (descending) so that the proposal order tells the classifier nothing."""
    data = json.loads(gt_json.read_text())
    rng = np.random.default_rng(seed)
    records = []
    for image in data["images"]:
        h, w = image["height"], image["width"]
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        masks = []
        for ann in anns:
            masks += _jitters(mask_utils.decode(ann["segmentation"]), rng)
        masks += _random_blobs(h, w, 4, rng)
        masks = [m for m in masks if m.any()]
        stack = np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)
        rles = [mask_utils.encode(np.asfortranarray(m))["counts"] for m in stack]
        order = rng.permutation(len(rles))
        records.append(
            {
                "image_id": image["id"],
                "file_name": image["file_name"],
                "height": h,
                "width": w,
                "scores": np.sort(rng.random(len(rles)))[::-1].astype(np.float32),
                "boxes": mask_boxes(stack)[order],
                "rles": [rles[i] for i in order],
                "scales": np.zeros(len(rles), np.int8),
            }
        )
    write_proposals(out, records, ATTRS)
    return out


def classify_config(folder: Path, data_root: Path, **classify) -> Path:
    """config/tiny.yaml pointing at `data_root`, with CLASSIFY and `classify` as its section."""
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["data"].update(
        root=str(data_root),
        train_json=str(data_root / "train.json"),
        train_images=str(data_root / "images"),
        val_json=str(data_root / "val.json"),
        val_images=str(data_root / "images"),
    )
    config["classify"] = {**CLASSIFY, **classify}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
