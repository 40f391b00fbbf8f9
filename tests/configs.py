"""Configs for tests: config/tiny.yaml moved onto a generated dataset (shared by conftest)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ifcn.config import defaults

ROOT = Path(__file__).resolve().parents[1]


def write_config(folder: Path, data_root: Path, **sections) -> Path:
    """config/tiny.yaml with its data paths moved to ``data_root`` and ``sections`` merged in."""
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["data"].update(
        root=str(data_root),
        train_json=str(data_root / "train.json"),
        train_images=str(data_root / "images"),
        val_json=str(data_root / "val.json"),
        val_images=str(data_root / "images"),
    )
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def settings(section: str, **given: object) -> dict:
    """A config section as a stage reads it: the schema's defaults with ``given`` keys replaced."""
    return defaults(section) | given
