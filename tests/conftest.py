"""Shared fixtures: a tiny synthetic dataset and configs pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ifcn.data.synth import generate_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The dataset of config/tiny.yaml, generated once per session."""
    synth = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())["data"]["synth"]
    out = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(out, **synth)
    return out


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


@pytest.fixture
def tiny_config(tmp_path, tiny_data) -> Path:
    return write_config(tmp_path, tiny_data)


@pytest.fixture
def make_config():
    """``write_config`` as a fixture, for tests that need configs of their own."""
    return write_config
