"""Shared fixtures: a tiny synthetic dataset and configs pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ifcn.config import defaults
from ifcn.data.synth import generate_dataset
from tests.configs import ROOT, write_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The dataset of config/tiny.yaml, generated once per session."""
    synth = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())["data"]["synth"]
    out = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(out, defaults("data.synth") | synth)
    return out


@pytest.fixture
def tiny_config(tmp_path, tiny_data) -> Path:
    return write_config(tmp_path, tiny_data)


@pytest.fixture
def make_config():
    """``write_config`` as a fixture, for tests that need configs of their own."""
    return write_config
