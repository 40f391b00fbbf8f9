"""candidates.h5: writer/reader round trip, merging shards, and damaged files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ifcn import cli
from ifcn.errors import IfcnError
from ifcn.proposals.candidates import Candidates, CandidateWriter, ImageCandidates
from ifcn.proposals.merge import merge_candidates
from ifcn.proposals.sharding import parse_shard, parse_shards
from tests.proposals.hand import candidate_attrs, score_map_candidates


def _record(image_id: int, count: int, seed: int = 0) -> ImageCandidates:
    return score_map_candidates(image_id, count, seed)


def _write(path, records, shard="0/1", **changes):
    with CandidateWriter(path, candidate_attrs(shard, **changes)) as writer:
        for record in records:
            writer.add(record)
    return path


def _same(a: ImageCandidates, b: ImageCandidates) -> None:
    assert (a.image_id, a.file_name, a.height, a.width) == (
        b.image_id,
        b.file_name,
        b.height,
        b.width,
    )
    for name in ("tops", "objectness", "scale", "resize", "map_sizes", "masks", "boxes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert b.masks.dtype == np.float16 and b.objectness.dtype == np.float32
    for x, y in zip(a.maps, b.maps, strict=True):
        np.testing.assert_array_equal(x, y)


def test_round_trip_keeps_every_column_and_attribute(tmp_path):
    records = [_record(3, 7), _record(1, 0), _record(8, 20_000)]  # an empty image; many rows
    path = _write(tmp_path / "c.h5", records)
    with Candidates(path) as read:
        assert len(read) == 3 and read.num_candidates == 20_007 and read.mask_size == 5
        assert read.image_ids.tolist() == [3, 1, 8]
        for record in records:
            _same(read.get(record.image_id), record)
        attrs = read.attrs
    assert attrs["config"] == {"model": {"k": 3}} and attrs["scales"] == [30, 54]
    assert attrs["objectness"] == "logit" and attrs["format"] == "ifcn-candidates"
    assert attrs["storage"] == "score_maps" and attrs["format_version"] == 2
    assert not list(tmp_path.glob(".c.h5*"))


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError), CandidateWriter(path, candidate_attrs()) as writer:
        writer.add(_record(1, 3))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_merge_orders_shards_by_image_and_keeps_the_rows(tmp_path):
    first = _write(tmp_path / "a.h5", [_record(1, 4), _record(2, 0)], "0/2")
    second = _write(tmp_path / "b.h5", [_record(5, 3), _record(9, 2)], "1/2")
    out = tmp_path / "merged.h5"
    assert merge_candidates([second, first], out) == 4
    with Candidates(out) as merged:
        assert merged.image_ids.tolist() == [1, 2, 5, 9]
        assert merged.attrs["shard"] == "0/1"
        for image_id in (1, 2, 5, 9):
            _same(merged.get(image_id), _record(image_id, {1: 4, 2: 0, 5: 3, 9: 2}[image_id]))


def test_merge_refuses_overlapping_or_foreign_or_missing_shards(tmp_path):
    a = _write(tmp_path / "a.h5", [_record(1, 2), _record(2, 2)], "0/2")
    overlap = _write(tmp_path / "b.h5", [_record(2, 2), _record(3, 2)], "1/2")
    foreign = _write(tmp_path / "c.h5", [_record(3, 2)], "1/2", checkpoint_sha256="cd" * 32)
    out = tmp_path / "merged.h5"
    with pytest.raises(IfcnError, match="overlapping") as info:
        merge_candidates([a, overlap], out)
    assert str(overlap) in str(info.value)
    with pytest.raises(IfcnError, match="checkpoint_sha256"):
        merge_candidates([a, foreign], out)
    with pytest.raises(IfcnError, match=r"shards \[1\] of 2 are missing"):
        merge_candidates([a], out)
    with pytest.raises(IfcnError, match="also given"):
        merge_candidates([a, a], out)
    assert not out.exists()
    assert merge_candidates([a], out, allow_partial=True) == 2
    with Candidates(out) as partial:
        assert partial.attrs["shard"] == "0/2"


def test_truncated_file_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys):
    good = _write(tmp_path / "a.h5", [_record(1, 300), _record(2, 300)], "0/2")
    data = good.read_bytes()
    truncated = tmp_path / "b.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IfcnError, match="truncated") as info:
        Candidates(truncated)
    assert str(truncated) in str(info.value)
    out = tmp_path / "merged.h5"
    code = cli.main(["merge", "--inputs", str(good), str(truncated), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(truncated) in err
    proposals = tmp_path / "proposals.h5"
    code = cli.main(["nms", "--candidates", str(truncated), "--out", str(proposals)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(truncated) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]


def test_not_a_candidates_file(tmp_path):
    path = tmp_path / "x.h5"
    path.write_text("hello")
    with pytest.raises(IfcnError, match="x.h5"):
        Candidates(path)
    with pytest.raises(IfcnError, match="not found"):
        Candidates(tmp_path / "missing.h5")


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for text in ("5/5", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(text)


def _contents(path) -> dict:
    """Every dataset and attribute of an HDF5 file, as plain values."""
    out = {}
    with h5py.File(path) as f:
        out["attrs"] = {key: np.asarray(value).tolist() for key, value in f.attrs.items()}
        f.visititems(lambda name, node: out.__setitem__(name, node[()].tolist())
                     if isinstance(node, h5py.Dataset) else None)  # fmt: skip
    return out


def test_a_partial_merge_merges_with_the_missing_shards_into_the_full_merge(tmp_path):
    ids = [[1, 2], [3], [5, 6], [7], [9, 11]]  # shards of sorted ids: 0/5 .. 4/5
    shards = [_write(tmp_path / f"s{i}.h5", [_record(j, j % 4) for j in chunk], f"{i}/5")
              for i, chunk in enumerate(ids)]  # fmt: skip
    full = tmp_path / "full.h5"
    assert merge_candidates(shards, full) == 8
    partial = tmp_path / "partial.h5"
    assert merge_candidates([shards[3], shards[1]], partial, allow_partial=True) == 2
    with Candidates(partial) as read:
        assert read.attrs["shard"] == "1,3/5" and read.image_ids.tolist() == [3, 7]
    again = tmp_path / "again.h5"
    assert merge_candidates([shards[4], partial, shards[0], shards[2]], again) == 8
    assert _contents(again) == _contents(full)
    with Candidates(again) as read:
        assert read.attrs["shard"] == "0/1" and read.image_ids.tolist() == [1, 2, 3, 5, 6, 7, 9, 11]
    with pytest.raises(IfcnError, match="shard 3/5 is also given as"):
        merge_candidates([partial, shards[3], shards[0]], tmp_path / "x.h5", allow_partial=True)
    for text in ("1,1/5", "1,/5", "1,3", "1,7/5"):
        with pytest.raises(ValueError):
            parse_shards(text)
    assert parse_shards("3,1/5") == ([1, 3], 5) and parse_shards("2/4") == ([2], 4)
