"""proposals.h5 (DESIGN §7): writer, reader, failure modes, the documented plain-h5py example."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ifcn.errors import IfcnError
from ifcn.proposals.format import (
    FORMAT,
    FORMAT_VERSION,
    ImageProposals,
    Proposals,
    ProposalWriter,
    write_proposals,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "proposals-format.md"
ATTRS = {
    "config": {"model": {"backbone": "tiny"}, "nms": {"iou": 0.8}},
    "checkpoint_sha256": "ab" * 32,
    "dataset": "synthetic-val",
    "scales": [400.0, 600.0],
    "k": 5,
    "m": 21,
}


def random_image(rng: np.random.Generator, image_id: int, n: int, h=24, w=32) -> ImageProposals:
    masks = np.zeros((h, w, n), np.uint8, order="F")
    for j in range(n):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks[y0 : y0 + rng.integers(1, h - y0), x0 : x0 + rng.integers(1, w - x0), j] = 1
    encoded = mask_utils.encode(masks) if n else []
    rles = [r["counts"] for r in encoded]
    boxes = mask_utils.toBbox(encoded).astype(np.float32).reshape(-1, 4) if n else np.zeros((0, 4))
    boxes[:, 2:] += boxes[:, :2]
    return ImageProposals(
        image_id=image_id,
        file_name=f"img_{image_id}.png",
        height=h,
        width=w,
        scores=np.sort(rng.random(n).astype(np.float32))[::-1],
        boxes=boxes,
        rles=rles,
        scales=rng.integers(0, 2, n).astype(np.int8),
    )


@pytest.fixture
def records() -> list[ImageProposals]:
    rng = np.random.default_rng(0)
    counts = [5, 0, 12, 1, 0, 30]  # images without proposals included, also at the end
    return [random_image(rng, 100 + 3 * i, n) for i, n in enumerate(counts)] + [
        random_image(rng, 7, 0)
    ]


@pytest.fixture
def written(tmp_path, records) -> Path:
    path = tmp_path / "proposals.h5"
    write_proposals(path, records, ATTRS)
    return path


def assert_same(a: ImageProposals, b: ImageProposals) -> None:
    assert (a.image_id, a.file_name, a.height, a.width) == (
        b.image_id,
        b.file_name,
        b.height,
        b.width,
    )
    assert a.rles == b.rles and all(type(c) is bytes for c in b.rles)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.boxes.reshape(-1, 4), b.boxes)
    np.testing.assert_array_equal(a.scales, b.scales)
    assert (
        b.scores.dtype == np.float32 and b.boxes.dtype == np.float32 and b.scales.dtype == np.int8
    )


def test_round_trip_returns_what_was_written_including_empty_images(written, records):
    with Proposals(written) as proposals:
        assert len(proposals) == len(records)
        np.testing.assert_array_equal(proposals.image_ids, [r.image_id for r in records])
        for record, read in zip(records, proposals, strict=True):
            assert_same(record, read)
        for record in records:
            assert_same(record, proposals[record.image_id])


def test_file_layout_and_attributes_follow_design_section_7(written, records):
    total = sum(len(r) for r in records)
    with h5py.File(written) as f:
        attrs = dict(f.attrs)
        assert attrs["format"] == FORMAT and attrs["format_version"] == FORMAT_VERSION
        assert json.loads(attrs["config"]) == ATTRS["config"]
        assert datetime.fromisoformat(attrs["created"]).tzinfo is not None
        assert list(attrs["scales"]) == ATTRS["scales"] and attrs["k"] == 5 and attrs["m"] == 21
        assert attrs["ifcn_version"] and attrs["checkpoint_sha256"] == "ab" * 32
        expected = {
            "images/id": ((len(records),), np.int64),
            "images/height": ((len(records),), np.int32),
            "images/width": ((len(records),), np.int32),
            "images/offset": ((len(records) + 1,), np.int64),
            "proposals/score": ((total,), np.float32),
            "proposals/box": ((total, 4), np.float32),
            "proposals/scale": ((total,), np.int8),
        }
        for name, (shape, dtype) in expected.items():
            assert f[name].shape == shape and f[name].dtype == dtype, name
            assert f[name].chunks and f[name].compression == "gzip", name
        assert f["images/file_name"].asstr()[0] == records[0].file_name
        rle = f["proposals/rle"]
        assert rle.shape == (total,) and rle.dtype.kind == "S" and rle.compression == "gzip"
        assert np.diff(f["images/offset"][:]).tolist() == [len(r) for r in records]


def test_one_image_by_id_with_top_n_and_decoded_masks(written, records):
    record = records[2]
    with Proposals(written) as proposals:
        assert record.image_id in proposals and 12345 not in proposals
        assert proposals.size(record.image_id) == (record.height, record.width)
        assert proposals.file_name(record.image_id) == record.file_name
        np.testing.assert_array_equal(proposals.scores(record.image_id, top_n=4), record.scores[:4])
        np.testing.assert_array_equal(proposals.boxes(record.image_id, top_n=4), record.boxes[:4])
        np.testing.assert_array_equal(proposals.scales(record.image_id), record.scales)
        assert [r["counts"] for r in proposals.rles(record.image_id, top_n=3)] == record.rles[:3]
        assert len(proposals.get(record.image_id, top_n=100)) == len(record)
        masks = proposals.masks(record.image_id, top_n=4)
        expected = mask_utils.decode(record.coco_rles()[:4])
        np.testing.assert_array_equal(masks, np.moveaxis(expected, 2, 0))
        assert proposals.masks(records[1].image_id).shape == (0, record.height, record.width)
        with pytest.raises(IfcnError, match="no image 12345"):
            proposals.scores(12345)


def test_iter_images_reads_a_subset_in_file_order(written, records):
    wanted = [records[5].image_id, records[0].image_id, records[4].image_id]
    with Proposals(written) as proposals:
        got = list(proposals.iter_images(wanted, top_n=2))
    assert [g.image_id for g in got] == [records[i].image_id for i in (0, 4, 5)]
    assert [len(g) for g in got] == [2, 0, 2]
    assert got[2].rles == records[5].rles[:2]


def test_attrs_come_back_as_python_values(written):
    with Proposals(written) as proposals:
        attrs = proposals.attrs
    assert attrs["config"] == ATTRS["config"] and attrs["scales"] == ATTRS["scales"]
    assert attrs["dataset"] == "synthetic-val" and attrs["format_version"] == 1


def test_writer_removes_its_temporary_file_when_the_block_raises(tmp_path, records):
    path = tmp_path / "proposals.h5"
    with pytest.raises(RuntimeError), ProposalWriter(path, ATTRS) as writer:
        writer.add(**records[0].__dict__)
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_only_when_the_new_one_is_complete(written, records):
    before = written.read_bytes()
    with pytest.raises(IfcnError), ProposalWriter(written, ATTRS) as writer:
        writer.add(**records[0].__dict__)
        writer.add(**records[0].__dict__)  # same image twice
    assert written.read_bytes() == before
    assert sorted(p.name for p in written.parent.iterdir()) == ["proposals.h5"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"scores": np.array([0.1, 0.5, 0.2, 0.0, 0.0], np.float32)}, "descending"),
        ({"scores": np.array([0.9, np.nan, 0.2, 0.1, 0.0], np.float32)}, "NaN"),
        ({"boxes": np.zeros((4, 4), np.float32)}, "4 boxes"),
        ({"scales": np.full(5, 2, np.int8)}, "scale index"),
        ({"rles": ["not bytes"] * 5}, "bytes"),
        ({"height": 0}, "not positive"),
    ],
)
def test_writer_refuses_malformed_rows(tmp_path, records, change, message):
    with pytest.raises(IfcnError, match=message), ProposalWriter(tmp_path / "p.h5", ATTRS) as w:
        w.add(**{**records[0].__dict__, **change})
    assert list(tmp_path.iterdir()) == []


def test_writer_requires_the_design_attributes(tmp_path):
    with pytest.raises(IfcnError, match="checkpoint_sha256, dataset"):
        ProposalWriter(tmp_path / "p.h5", {"config": {}, "scales": [1.0], "k": 5, "m": 21})
    assert list(tmp_path.iterdir()) == []


def test_reader_names_the_file_that_is_not_an_ifcn_proposals_file(tmp_path, written):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(IfcnError, match=r"plain\.h5: not an ifcn proposals file"):
        Proposals(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(IfcnError, match=r"notes\.txt: not a readable proposals file"):
        Proposals(text)
    with h5py.File(written, "a") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(IfcnError, match="format_version 2"):
        Proposals(written)
    with pytest.raises(IfcnError, match="proposals file not found"):
        Proposals(tmp_path / "absent.h5")
    with pytest.raises(IfcnError, match="is a folder"):
        Proposals(tmp_path)


def test_documented_plain_h5py_example_reads_a_written_file(
    tmp_path, written, records, monkeypatch
):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(b for b in blocks if "import h5py" in b)
    assert len(example.strip().splitlines()) <= 10
    monkeypatch.chdir(written.parent)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    first = records[0]
    np.testing.assert_array_equal(namespace["scores"], first.scores)
    expected = mask_utils.decode(first.coco_rles())
    np.testing.assert_array_equal(namespace["masks"], expected)


def test_a_file_written_with_plain_h5py_as_the_docs_show_is_read(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(b for b in blocks if 'h5py.File("proposals.h5", "w")' in b)
    rng = np.random.default_rng(3)
    record = random_image(rng, 7, 6, h=480, w=640)
    masks = mask_utils.decode(record.coco_rles())
    monkeypatch.chdir(tmp_path)
    namespace = {"masks": masks, "scores": record.scores}
    exec(compile(example, str(DOC), "exec"), namespace)
    with h5py.File(tmp_path / "proposals.h5") as f:  # what h5py makes of a list of bytes
        assert h5py.check_string_dtype(f["proposals/rle"].dtype).length is None
    with Proposals(tmp_path / "proposals.h5") as read:
        got = read.get(7)
        assert read.file_name(7) == "a.jpg" and read.size(7) == (480, 640)
        assert got.rles == record.rles and all(type(r) is bytes for r in got.rles)
        np.testing.assert_array_equal(got.scores, record.scores)
        np.testing.assert_array_equal(read.masks(7), masks.transpose(2, 0, 1))
        assert [len(image) for image in read] == [6]


@pytest.mark.parametrize(
    "dtype",
    [
        h5py.string_dtype("utf-8"),  # variable length, UTF-8 (h5py's str)
        h5py.string_dtype("ascii"),  # variable length, ASCII (h5py's bytes)
        h5py.string_dtype("utf-8", 200),  # fixed length, UTF-8
        "space-padded",  # fixed length, padded with spaces (Fortran's, MATLAB's)
    ],
    ids=["vlen-utf8", "vlen-ascii", "fixed-utf8", "fixed-space-padded"],
)
def test_rle_text_of_any_hdf5_string_type_is_read(tmp_path, written, records, dtype):
    with h5py.File(written, "r+") as f:
        rles = f["proposals/rle"][:].tolist()
        del f["proposals/rle"]
        if dtype == "space-padded":
            tid = h5py.h5t.C_S1.copy()
            tid.set_size(200)
            tid.set_strpad(h5py.h5t.STR_SPACEPAD)
            space = h5py.h5s.create_simple((len(rles),))
            column = h5py.h5d.create(f["proposals"].id, b"rle", tid, space)
            padded = np.array([r.ljust(200, b" ") for r in rles], dtype="S200")
            column.write(h5py.h5s.ALL, h5py.h5s.ALL, padded)
        else:
            f.create_dataset("proposals/rle", data=rles, dtype=dtype)
    with Proposals(written) as read:
        for record in records:
            assert_same(record, read.get(record.image_id))


def test_an_rle_column_that_is_not_text_is_refused_naming_its_type(tmp_path, written):
    with h5py.File(written) as f:
        rows = len(f["proposals/rle"])
    for dtype, kind in (
        (np.int32, "int32 numbers"),
        (h5py.vlen_dtype(np.uint8), "variable-length sequences of uint8"),
    ):
        with h5py.File(written, "r+") as f:
            del f["proposals/rle"]
            f.create_dataset("proposals/rle", (rows,), dtype=dtype)
            f["proposals/rle"][:] = [np.frombuffer(b"PP", np.uint8)] * rows if kind[0] == "v" else 0
        with pytest.raises(IfcnError) as info:
            Proposals(written)
        assert str(info.value) == (
            f"{written}: proposals file: /proposals/rle holds {kind}, not text (an HDF5 "
            "string type, fixed or variable length)"
        )
