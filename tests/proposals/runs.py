"""Small inference runs for tests: images on disk, a tiny config and an untrained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml
from PIL import Image

from ifcn.config import load_config
from ifcn.model import build_model
from ifcn.training.checkpoint import save_atomic


def write_images(tmp_path, images: dict[int, np.ndarray]) -> tuple:
    """PNGs in tmp_path/images and a COCO JSON listing them (no annotations)."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    entries = []
    for image_id, pixels in images.items():
        name = f"{image_id:04d}.png"
        Image.fromarray(pixels).save(root / name)
        entries.append(
            {"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]}
        )
    path = tmp_path / "images.json"
    path.write_text(json.dumps({"images": entries, "annotations": [], "categories": []}))
    return path, root


def small_config(tmp_path, **model) -> tuple:
    """A tiny model at two small scales: (config path, loaded config)."""
    config = {
        "data": {"val_images": str(tmp_path / "images")},
        "model": {"backbone": "tiny", "k": 3, "m": 9, "head_channels": 8, **model},
        "infer": {"scales": [40, 64], "max_size": 120, "pre_nms_topk": 12},
    }
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, load_config(path)


def checkpoint(tmp_path, config: dict, name: str = "model_final.pt"):
    """An untrained checkpoint of the config's model."""
    torch.manual_seed(0)
    model = build_model(config["model"])
    return save_atomic(
        {"model": model.state_dict(), "config": config, "iteration": 0}, tmp_path / name
    )


def small_run(tmp_path):
    """Three random images (one smaller than a window): (JSON, config, checkpoint)."""
    rng = np.random.default_rng(1)
    images = {
        5: (rng.random((48, 64, 3)) * 255).astype(np.uint8),
        2: (rng.random((20, 30, 3)) * 255).astype(np.uint8),  # smaller than one window
        11: (rng.random((64, 40, 3)) * 255).astype(np.uint8),
    }
    json_path, _ = write_images(tmp_path, images)
    config_path, config = small_config(tmp_path)
    return json_path, config_path, checkpoint(tmp_path, config)
