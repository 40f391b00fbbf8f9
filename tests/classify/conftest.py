"""Fixtures of the classifier tests: a synthetic set with oracle proposals, a trained classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ifcn.classify.training import run_training
from ifcn.config import defaults, load_config
from ifcn.data.synth import generate_dataset
from tests.classify.oracle import classify_config, write_oracle_proposals


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def oracle_data(tmp_path_factory) -> Path:
    """24 training and 8 validation images of 128-160 px with oracle proposals for both."""
    root = tmp_path_factory.mktemp("oracle")
    synth = {"seed": 5, "num_train": 24, "num_val": 8, "min_side": 128, "max_side": 160}
    generate_dataset(root, defaults("data.synth") | synth | {"max_objects": 4})
    for split, seed in (("train", 0), ("val", 1)):
        write_oracle_proposals(root / f"{split}.json", root / f"{split}_proposals.h5", seed)
    return root


@pytest.fixture(scope="session")
def classifier(oracle_data, tmp_path_factory) -> Path:
    """model_final.pt of a 4-step classifier run on the oracle proposals."""
    folder = tmp_path_factory.mktemp("classifier")
    config = load_config(classify_config(folder, oracle_data, iters=4, checkpoint_period=2))
    return run_training(
        config,
        oracle_data / "train_proposals.h5",
        oracle_data / "train.json",
        folder / "run",
        device_name="cpu",
        show_progress=False,
    )
