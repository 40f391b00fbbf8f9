"""Proposal and candidate files made to hurt (issue 23): sizes declared but not stored, links
that loop or lead to other files, data stored in other files, resize factors that lie. Each is
refused in one line naming the file, before anything is allocated for it or another file is
opened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ifcn.errors import IfcnError
from ifcn.proposals.candidates import Candidates, CandidateWriter
from ifcn.proposals.format import Proposals, write_proposals
from tests.proposals.hand import candidate_attrs, score_map_candidates
from tests.proposals.test_faults import _one_line_failure

ROOT = Path(__file__).resolve().parents[2]
ATTRS = {"config": {}, "checkpoint_sha256": "0" * 64, "dataset": "gt.json", "scales": [1.0],
         "k": 5, "m": 21}  # fmt: skip
H, W = 30, 40
ROWS = 3_000_000_000  # declared rows: 11 GiB of float32 scores


def _mask_rle(y0: int, x0: int) -> bytes:
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[y0 : y0 + 8, x0 : x0 + 9] = 1
    return mask_utils.encode(mask)["counts"]


@pytest.fixture
def files(tmp_path):
    """gt.json of two images and a proposals.h5 of two proposals on each."""
    images, annotations, records = [], [], []
    for image_id in (1, 2):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": H, "width": W})
        rles = [_mask_rle(2, 3), _mask_rle(12, 20)]
        segmentation = {"size": [H, W], "counts": rles[0].decode()}
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                            "area": 72.0, "bbox": [3, 2, 9, 8],
                            "segmentation": segmentation})  # fmt: skip
        records.append({"image_id": image_id, "file_name": f"{image_id}.png", "height": H,
                        "width": W, "scores": np.array([0.9, 0.5], np.float32),
                        "boxes": np.array([[3, 2, 12, 10], [20, 12, 29, 20]], np.float32),
                        "rles": rles, "scales": np.zeros(2, np.int8)})  # fmt: skip
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": 1}]}))  # fmt: skip
    proposals = tmp_path / "proposals.h5"
    write_proposals(proposals, records, ATTRS)
    return gt, proposals


# Runs `python -m ifcn ARGS` under limits (a regression must fail, not swap the machine to
# death or run for ever) and prints its peak resident memory in KiB (wait4). A small process
# forks it: a child's peak counts the pages of the process it was forked from (the kernel
# keeps the larger of its hiwater marks across exec), and a long pytest session holds 800 MiB.
_RUNNER = """
import os, resource, sys
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (300, 300))
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.executable, [sys.executable, "-m", "ifcn", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _ifcn(tmp_path: Path, *args: object) -> tuple[int, str, int]:
    """`python -m ifcn args` in a process of its own: exit code, stderr, peak resident memory
    in MiB (its own)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        process = subprocess.run(
            [sys.executable, "-c", _RUNNER, *map(str, args)], stdout=subprocess.PIPE,
            stderr=stderr, env=env, cwd=ROOT, text=True, check=False,
        )  # fmt: skip
    return process.returncode, err.read_text(), int(process.stdout) // 1024


def _one_line(code: int, err: str, *names: object) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for name in names:
        assert str(name) in err, (name, err)
    return lines[0]


def _declare_huge(path: Path, columns: dict[str, tuple[str, tuple]], offset: str, rows: int):
    """Replace columns of a file by chunked, compressed ones declaring `rows` rows and holding
    no data (nothing written: no chunk is stored), and the offsets by [0, rows]."""
    with h5py.File(path, "r+") as f:
        for name, (dtype, shape) in columns.items():
            del f[name]
            f.create_dataset(name, shape=(rows, *shape), dtype=dtype, chunks=(16384, *shape),
                             compression="gzip")  # fmt: skip
        first = f[offset][:]
        del f[offset]
        f[offset] = np.array([0, rows] + [rows] * (len(first) - 2), np.int64)


def test_a_proposal_file_declaring_3e9_rows_it_does_not_hold_is_refused_in_small_memory(
    tmp_path, files
):
    gt, proposals = files
    columns = {"proposals/score": ("f4", ()), "proposals/box": ("f4", (4,)),
               "proposals/scale": ("i1", ()), "proposals/rle": ("S8", ())}  # fmt: skip
    _declare_huge(proposals, columns, "images/offset", ROWS)
    assert proposals.stat().st_size < 2 << 20
    with pytest.raises(IfcnError, match="declares 3000000000 rows"):
        Proposals(proposals)
    runs = {  # the most resident memory each may take, in MiB (torch alone takes ~700)
        ("export", "--proposals", proposals, "--out", tmp_path / "r.json"): 600,
        ("evaluate", "--gt", gt, "--proposals", proposals, "--out", tmp_path / "ar.json",
         "--workers", "1"): 600,
        ("viz", "--each", "--proposals", proposals, "--image-root", tmp_path, "--out",
         tmp_path / "pictures"): 1500,
    }  # fmt: skip
    for args, limit in runs.items():
        code, err, peak = _ifcn(tmp_path, *args)
        _one_line(code, err, proposals, "declares")
        assert peak < limit, (args[0], peak)  # the columns alone would take 11 GiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.json", "proposals.h5", "stderr.txt"]


@pytest.mark.parametrize("column", ["images/id", "images/height", "images/file_name"])
def test_an_image_table_declaring_rows_it_does_not_hold_is_refused(tmp_path, files, column):
    _, proposals = files
    dtype = h5py.string_dtype() if column.endswith("file_name") else "i8"
    with h5py.File(proposals, "r+") as f:
        del f[column]
        f.create_dataset(column, shape=(ROWS,), dtype=dtype, chunks=(16384,))
    with pytest.raises(IfcnError, match=f"/{column} declares 3000000000 rows") as info:
        Proposals(proposals)
    assert str(proposals) in str(info.value)


def test_a_text_column_declaring_gigabyte_wide_rows_is_refused(tmp_path, files):
    _, proposals = files
    with h5py.File(proposals, "r+") as f:
        del f["proposals/rle"]
        f.create_dataset("proposals/rle", shape=(4,), dtype="S1000000000", chunks=(1,),
                         compression="gzip")  # fmt: skip
    with pytest.raises(IfcnError, match="rle declares 4 rows .4000000000 bytes"):
        Proposals(proposals)


def test_a_contiguous_column_without_its_data_is_refused(tmp_path, files):
    _, proposals = files
    with h5py.File(proposals, "r+") as f:  # contiguous and never written: no storage at all
        del f["proposals/score"]
        f.create_dataset("proposals/score", shape=(4,), dtype="f4")
    with pytest.raises(IfcnError, match="score declares 4 rows .16 bytes. but the file stores 0"):
        Proposals(proposals)


def test_a_candidate_file_declaring_rows_it_does_not_hold_is_refused_in_small_memory(tmp_path):
    candidates = tmp_path / "candidates.h5"
    with CandidateWriter(candidates, candidate_attrs()) as writer:
        writer.add(score_map_candidates(1, 6))
    _declare_huge(candidates, {"cells/scores": ("f2", (9,))}, "images/cells_offset", ROWS)
    for args in (
        ("nms", "--candidates", candidates, "--out", tmp_path / "p.h5", "--workers", "1"),
        ("merge", "--inputs", candidates, "--out", tmp_path / "m.h5"),
    ):
        code, err, peak = _ifcn(tmp_path, *args)
        _one_line(code, err, candidates, "/cells/scores declares 3000000000 rows")
        assert peak < 1500, (args[0], peak)  # torch alone takes ~700 MiB; the cells 50 GiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidates.h5", "stderr.txt"]


# --- links and storage in other files ------------------------------------------------------


def test_a_soft_link_loop_is_one_line(tmp_path, files):
    gt, proposals = files
    with h5py.File(proposals, "r+") as f:
        del f["images/id"]
        f["images/id"] = h5py.SoftLink("/images/id")  # resolving it never ends
    code, err, _ = _ifcn(tmp_path, "evaluate", "--gt", gt, "--proposals", proposals, "--out",
                         tmp_path / "ar.json", "--workers", "1")  # fmt: skip
    line = _one_line(code, err, proposals)
    assert "/images/id is a soft link" in line
    with h5py.File(proposals, "r+") as f:  # a link to another place in the file: refused too
        del f["images/id"]
        f["images/id"] = h5py.SoftLink("/images/height")
    with pytest.raises(IfcnError, match="/images/id is a soft link"):
        Proposals(proposals)


def test_an_external_link_is_refused_without_opening_its_target(tmp_path, files):
    gt, proposals = files
    other = tmp_path / "other.h5"
    other.write_bytes(proposals.read_bytes())  # a valid target: following it would "work"
    with h5py.File(proposals, "r+") as f:
        del f["proposals"]
        f["proposals"] = h5py.ExternalLink(str(other), "/proposals")
    with pytest.raises(IfcnError, match="/proposals is an external link to .*other.h5"):
        Proposals(proposals)
    # a FIFO as the target: opening it would block, so a refusal in time shows it was not
    other.unlink()
    os.mkfifo(other)
    done = subprocess.run(
        [sys.executable, "-m", "ifcn", "export", "--proposals", str(proposals), "--out",
         str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    _one_line(done.returncode, done.stderr, proposals, "external link")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("kind", ["external", "virtual"])
def test_data_stored_in_other_files_is_refused(tmp_path, files, kind):
    _, proposals = files
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.array([0.9, 0.5, 0.9, 0.5], np.float32).tobytes())
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["score"] = np.array([0.9, 0.5, 0.9, 0.5], np.float32)
    with h5py.File(proposals, "r+") as f:
        del f["proposals/score"]
        if kind == "external":
            f["proposals"].create_dataset("score", shape=(4,), dtype="f4",
                                          external=[(str(raw), 0, 16)])  # fmt: skip
        else:
            layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
            layout[:] = h5py.VirtualSource(str(source), "score", shape=(4,))
            f["proposals"].create_virtual_dataset("score", layout)
    with pytest.raises(IfcnError, match="data of /proposals/score lie in other files") as info:
        Proposals(proposals)
    assert str(proposals) in str(info.value)


# --- resize factors ------------------------------------------------------------------------


def test_resize_factors_that_are_not_those_of_the_image_are_refused(tmp_path, capsys):
    from ifcn import cli

    good = [score_map_candidates(1, 6), score_map_candidates(2, 6)]
    candidates = tmp_path / "candidates.h5"
    with CandidateWriter(candidates, candidate_attrs()) as writer:
        for record in good:
            writer.add(record)
    with h5py.File(candidates, "r+") as f:  # image 2's windows 1.5 times too large, in place
        f["images/resize"][1] = f["images/resize"][1] * 1.5
    with Candidates(candidates) as read:
        read.read(0)
        with pytest.raises(IfcnError, match=r"image 2: resize factors \[0.75, 1.35\] are not"):
            read.read(1)
    out = tmp_path / "proposals.h5"
    code = cli.main(["nms", "--candidates", str(candidates), "--out", str(out), "--workers", "1"])
    _one_line_failure(capsys, code, candidates, "scales [30, 54], max_size 0: [0.5, 0.9]")
    assert not out.exists()
    bad = score_map_candidates(3, 4)
    bad.resize = bad.resize * 1.5
    with pytest.raises(IfcnError, match="image 3: resize factors"):  # nor written
        with CandidateWriter(tmp_path / "c2.h5", candidate_attrs()) as writer:
            writer.add(bad)
    assert not (tmp_path / "c2.h5").exists()
    with h5py.File(candidates, "r+") as f:
        f.attrs["max_size"] = -3
    with pytest.raises(IfcnError, match="max_size -3: not image sides"):
        Candidates(candidates)
