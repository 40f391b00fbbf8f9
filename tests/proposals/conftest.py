"""Fixtures of the proposal-chain tests."""

from __future__ import annotations

import pytest

from tests.proposals import runs


@pytest.fixture
def small_run(tmp_path):
    """Three random images, a tiny config and an untrained checkpoint: (JSON, config, model)."""
    return runs.small_run(tmp_path)
