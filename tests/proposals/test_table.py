"""The per-image table both HDF5 files are: a text column is read back as written, whether its
chunks are inflated by ISA-L (a read spanning a chunk) or by HDF5 (a smaller read)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ifcn.proposals import table
from ifcn.proposals.table import Column, TableReader, TableWriter

GROUPS = {"rows": {"text": Column("text"), "value": Column("int32")}}


@pytest.fixture
def written(tmp_path):
    """A table of 60 images, 3,000 text rows of up to 1,500 bytes (no NUL): chunks of ~700."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1500, 3000)
    texts = [rng.integers(1, 256, n).astype(np.uint8).tobytes() for n in lengths]
    path = tmp_path / "t.h5"
    with TableWriter(path, {"format": "test", "format_version": 1}, GROUPS) as writer:
        for i in range(60):
            rows = slice(50 * i, 50 * (i + 1))
            writer.add({"id": i + 1, "file_name": f"{i}.png", "height": 8, "width": 8},
                       {"rows": {"text": texts[rows], "value": np.arange(3000)[rows]}})  # fmt: skip
    return path, texts


def test_text_rows_read_back_as_written_by_either_inflater(written, monkeypatch):
    path, texts = written
    inflated = []
    decompress = table.isal_zlib.decompress
    monkeypatch.setattr(
        table.isal_zlib, "decompress", lambda *a, **k: inflated.append(1) or decompress(*a, **k)
    )
    with h5py.File(path) as f:
        chunk = f["rows/text"].chunks[0]
    assert 300 < chunk < 1500
    with TableReader(path, "test", "test", (1,), GROUPS) as reader:
        for lo, hi in [(0, 3000), (1, 2999), (chunk - 3, 2 * chunk + 5), (10, 10 + chunk)]:
            before = len(inflated)
            assert reader.read("rows", lo, hi)["text"] == texts[lo:hi], (lo, hi)
            assert len(inflated) > before  # by ISA-L, chunk by chunk
        before = len(inflated)
        for lo, hi in [(5, 60), (chunk - 1, chunk + 1), (2990, 3000), (7, 7)]:
            assert reader.read("rows", lo, hi)["text"] == texts[lo:hi], (lo, hi)
        assert len(inflated) == before  # by h5py, whose chunk cache serves its neighbours
