"""Bad proposal files and faults of infer, merge, nms and export (issue 16): each is one line
naming the file (and the image), a non-zero exit, no output and no stray temporary."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import cli
from ifcn.data.rle import encode_counts
from ifcn.errors import IfcnError
from ifcn.proposals.candidates import Candidates, CandidateWriter
from ifcn.proposals.format import Proposals, write_proposals
from tests.proposals.hand import candidate_attrs, score_map_candidates
from tests.tmpfs import tmpfs

ROOT = Path(__file__).resolve().parents[2]
ATTRS = {"config": {}, "checkpoint_sha256": "0" * 64, "dataset": "gt.json", "scales": [1.0, 2.0],
         "k": 5, "m": 21}  # fmt: skip
H, W = 30, 40


PROGRESS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+: ")  # ifcn.progress lines in logs


def _messages(err: str) -> list[str]:
    """stderr without progress lines (tqdm's bar on a terminal, timestamped lines otherwise)."""
    lines = re.split(r"[\r\n]", err)
    return [
        line for line in lines if line.strip() and "%|" not in line and not PROGRESS.match(line)
    ]


def _one_line_failure(capsys, code: int, *names: object) -> str:
    err = capsys.readouterr().err
    assert code != 0 and len(_messages(err)) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def files(tmp_path):
    """A GT JSON of two images with boxes, and proposals.h5 with three proposals on each."""
    images, annotations, records = [], [], []
    for image_id in (1, 2):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": H, "width": W})
        masks = np.zeros((H, W, 3), np.uint8, order="F")
        for j, (y, x) in enumerate([(2, 3), (10, 12), (15, 20)]):
            masks[y : y + 8, x : x + 9, j] = 1
        encoded = mask_utils.encode(masks)
        for rle in encoded[:2]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": float(rle and 72),
                    "bbox": [0, 0, 1, 1],
                    "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
                }
            )
        boxes = mask_utils.toBbox(encoded)
        boxes[:, 2:] += boxes[:, :2]
        records.append({"image_id": image_id, "file_name": f"{image_id}.png", "height": H,
                        "width": W, "scores": np.array([0.9, 0.5, 0.11], np.float32),
                        "boxes": boxes, "rles": [r["counts"] for r in encoded],
                        "scales": np.array([0, 1, 0], np.int8)})  # fmt: skip
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": 1, "name": "thing"}]}))  # fmt: skip
    proposals = tmp_path / "proposals.h5"
    write_proposals(proposals, records, ATTRS)
    return gt, proposals


def _edit(path: Path, column: str, image_row: int, value) -> None:
    """Overwrite the first proposal row of an image in a proposals.h5 column, in place."""
    with h5py.File(path, "r+") as f:
        first = int(f["images/offset"][image_row])
        data = f[column][:]
        data[first] = value
        del f[column]
        f[column] = data


BAD_ROWS = {
    "unsorted": ("proposals/score", 0.05, "not in descending order"),  # 0.05, 0.5, 0.11 (D1)
    "nan": ("proposals/score", np.nan, "NaN"),  # D2
    "inf": ("proposals/score", np.inf, "infinity"),
    "box outside": ("proposals/box", [0, 0, W + 5, 3], "not inside"),
    "box nan": ("proposals/box", [0, 0, np.nan, 3], "NaN"),
    "scale": ("proposals/scale", 7, "scale index"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_every_reader_refuses_a_bad_proposal_row_naming_file_and_image(tmp_path, files, case,
                                                                       capsys):  # fmt: skip
    gt, proposals = files
    column, value, message = BAD_ROWS[case]
    _edit(proposals, column, 1, value)  # image 2
    with Proposals(proposals) as read:
        read.get(1)  # other images stay readable
        for access in (read.get, read.scores, read.rles, read.masks):
            with pytest.raises(IfcnError, match=message) as info:
                access(2, top_n=1)
            assert "image 2" in str(info.value) and str(proposals) in str(info.value)
        with pytest.raises(IfcnError, match=message):
            list(read.iter_images())
    out = tmp_path / "results.json"
    code = cli.main(["export", "--proposals", str(proposals), "--out", str(out), "--top-n", "1"])
    _one_line_failure(capsys, code, proposals, "image 2")
    ar = tmp_path / "ar.json"
    code = cli.main(["evaluate", "--gt", str(gt), "--proposals", str(proposals), "--out", str(ar),
                     "--workers", "1"])  # fmt: skip
    _one_line_failure(capsys, code, proposals, "image 2")
    assert not out.exists() and not ar.exists() and _leftovers(tmp_path) == []


def _rle_of(shape, box) -> bytes:
    mask = np.zeros(shape, np.uint8, order="F")
    mask[box[1] : box[3], box[0] : box[2]] = 1
    return mask_utils.encode(mask)["counts"]


BAD_RLES = {
    "another image size": _rle_of((H + 2, W), (3, 2, 12, 10)),
    "runs short of the image": mask_utils.frPyObjects({"counts": [5, 9], "size": [H, W]}, H, W)[
        "counts"
    ],
    "runs beyond the image": mask_utils.frPyObjects(
        {"counts": [5, 9, H * W], "size": [H, W]}, H, W
    )["counts"],
    "cut off": _rle_of((H, W), (3, 2, 12, 10))[:-1] + b"h",
    "not RLE text": b"\x00\x01junk",
    # runs 10, -5, H·W - 5: they add up to the image, but pycocotools reads -5 as 2**32 - 5
    "a negative run": encode_counts(np.array([10, -5, H * W - 5]), np.array([3]))[0],
}


@pytest.mark.parametrize("case", sorted(BAD_RLES))
def test_a_mask_whose_runs_do_not_cover_its_image_is_refused(tmp_path, files, case, capsys):
    _, proposals = files
    with h5py.File(proposals, "r+") as f:
        rles = [bytes(r) for r in f["proposals/rle"][:]]
        rles[0] = BAD_RLES[case]
        del f["proposals/rle"]
        f["proposals/rle"] = np.array(rles, dtype=f"S{max(map(len, rles))}")
    with Proposals(proposals) as read, pytest.raises(IfcnError, match="the mask of row 0"):
        read.get(1, top_n=3)
    out = tmp_path / "results.json"
    code = cli.main(["export", "--proposals", str(proposals), "--out", str(out)])
    _one_line_failure(capsys, code, proposals, "image 1")
    assert not out.exists()


def test_a_damaged_image_table_is_refused_on_opening(tmp_path, files):
    _, proposals = files
    damaged = {
        "images/offset": (np.array([0, 3, 7]), "offsets"),
        "images/id": (np.array([1, 1]), "appears twice"),
        "images/height": (np.array([H, -1], np.int32), "is not an image's"),
    }
    for column, (values, message) in damaged.items():
        copy = tmp_path / f"copy-{column.replace('/', '-')}.h5"
        copy.write_bytes(proposals.read_bytes())
        with h5py.File(copy, "r+") as f:
            del f[column]
            f[column] = values
        with pytest.raises(IfcnError, match=message):
            Proposals(copy)


def _candidates(tmp_path, records, name="candidates.h5", **attrs) -> Path:
    path = tmp_path / name
    with CandidateWriter(path, candidate_attrs(**attrs)) as writer:
        for record in records:
            writer.add(record)
    return path


def test_candidate_files_are_checked_where_they_enter(tmp_path, capsys):
    good = _candidates(tmp_path, [score_map_candidates(1, 6), score_map_candidates(2, 6)])
    edits = {
        "candidates/objectness": (np.nan, "objectness"),
        "candidates/scale": (5, "scale index"),
        "candidates/top": ([400, 400], "centred outside"),
        "images/resize": ([0.0, 1.0], "resize factors"),
    }
    for column, (value, message) in edits.items():
        bad = tmp_path / "bad.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            data = f[column][:]
            data[-1] = value
            del f[column]
            f[column] = data
        with Candidates(bad) as read:
            read.read(0)
            with pytest.raises(IfcnError, match=message):
                read.read(1)
        out = tmp_path / "proposals.h5"
        code = cli.main(["nms", "--candidates", str(bad), "--out", str(out), "--workers", "1"])
        _one_line_failure(capsys, code, bad, "image 2")
        code = cli.main(["merge", "--inputs", str(bad), "--out", str(tmp_path / "merged.h5")])
        _one_line_failure(capsys, code, bad, "image 2")
        assert not out.exists() and not (tmp_path / "merged.h5").exists()
    with h5py.File(good, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(IfcnError, match="format_version 1; this ifcn reads 2"):
        Candidates(good)


# --- D11: nothing survives ---------------------------------------------------------------------


def test_nms_writes_a_valid_file_when_no_proposal_survives(tmp_path, small_run):
    json_path, config_path, checkpoint = small_run
    candidates = tmp_path / "candidates.h5"
    assert cli.main(["infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
                     "--images", str(json_path), "--device", "cpu", "--out",
                     str(candidates)]) == 0  # fmt: skip
    out = tmp_path / "none.h5"
    args = ["nms", "--candidates", str(candidates), "--out", str(out), "--workers", "1"]
    assert cli.main([*args, "--mask-threshold", "1.0"]) == 0
    with Proposals(out) as read:
        assert read.image_ids.tolist() == [2, 5, 11] and read.counts.tolist() == [0, 0, 0]
        assert read.get(5).rles == [] and read.masks(5).shape == (0, 48, 64)
    silent = [score_map_candidates(1, 8)]
    for maps in silent[0].maps:
        maps[:] = -30  # every mask below any threshold
    empty_masks = _candidates(tmp_path, silent, "silent.h5")
    assert cli.main(["nms", "--candidates", str(empty_masks), "--out", str(out)]) == 0
    with Proposals(out) as read:
        assert read.counts.tolist() == [0]
    export = tmp_path / "results.json"
    assert cli.main(["export", "--proposals", str(out), "--out", str(export)]) == 0
    assert json.loads(export.read_text()) == []


def test_an_image_list_without_images_gives_empty_files_all_the_way(tmp_path, small_run):
    _, config_path, checkpoint = small_run
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    candidates, proposals = tmp_path / "c.h5", tmp_path / "p.h5"
    assert cli.main(["infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
                     "--images", str(empty), "--device", "cpu", "--out",
                     str(candidates)]) == 0  # fmt: skip
    assert cli.main(["merge", "--inputs", str(candidates), "--out", str(tmp_path / "m.h5")]) == 0
    assert cli.main(["nms", "--candidates", str(tmp_path / "m.h5"), "--out", str(proposals)]) == 0
    with Proposals(proposals) as read:
        assert len(read) == 0 and list(read) == []


# --- arguments ----------------------------------------------------------------------------------


def test_out_naming_a_folder_and_negative_workers_are_one_line(tmp_path, small_run, capsys):
    json_path, config_path, checkpoint = small_run
    folder = tmp_path / "taken"
    folder.mkdir()
    infer = ["infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
             "--images", str(json_path), "--device", "cpu"]  # fmt: skip
    _one_line_failure(capsys, cli.main([*infer, "--out", str(folder)]), folder, "is a folder")
    _one_line_failure(capsys, cli.main([*infer, "--workers", "-1", "--out", str(tmp_path / "c")]),
                      "--workers")  # fmt: skip
    candidates = _candidates(tmp_path, [score_map_candidates(1, 4)])
    nms = ["nms", "--candidates", str(candidates)]
    _one_line_failure(capsys, cli.main([*nms, "--out", str(folder)]), folder, "is a folder")
    code = cli.main([*nms, "--workers", "-1", "--out", str(tmp_path / "p.h5")])
    _one_line_failure(capsys, code, "--workers")
    code = cli.main(["merge", "--inputs", str(candidates), "--out", str(folder)])
    _one_line_failure(capsys, code, folder, "is a folder")
    # a name ending in '/' names a folder too, not the file without the slash
    slashed = f"{tmp_path / 'x.h5'}/"
    for args in (nms, ["merge", "--inputs", str(candidates)]):
        _one_line_failure(capsys, cli.main([*args, "--out", slashed]), slashed, "ends in '/'")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".h5") == ["candidates.h5"]


# --- D12: a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs (needs root), unmounted afterwards."""
    with tmpfs(tmp_path / "disk", "size=400k") as mount:
        yield mount


def _ifcn(*args: str) -> subprocess.CompletedProcess:
    """`python -m ifcn` in a process of its own, so that a crash shows as its exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ifcn", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)  # fmt: skip


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, small_disk):
    scales = (120, 216)  # resize factors 0.5 and 0.9 of a 240x320 image
    big = [score_map_candidates(i, 400, height=240, width=320, scales=scales)
           for i in range(1, 7)]  # fmt: skip
    candidates = _candidates(tmp_path, big, scales=list(scales))
    shards = [_candidates(tmp_path, big[:3], "a.h5", scales=list(scales)),
              _candidates(tmp_path, big[3:], "b.h5", scales=list(scales))]  # fmt: skip
    with h5py.File(shards[1], "r+") as f:
        f.attrs["shard"] = "1/2"
    with h5py.File(shards[0], "r+") as f:
        f.attrs["shard"] = "0/2"
    runs = {
        "merge": ["merge", "--inputs", *map(str, shards), "--out", str(small_disk / "m.h5")],
        "nms": ["nms", "--candidates", str(candidates), "--out", str(small_disk / "p.h5"),
                "--top-n", "400", "--mask-threshold", "0.01", "--workers", "1"],
    }  # fmt: skip
    (small_disk / "filler").write_bytes(b"\0" * (300 << 10))  # what is left fits no result
    for name, args in runs.items():
        done = _ifcn(*args)
        err = done.stderr
        assert done.returncode == 2, (name, done.returncode, err)
        assert len(_messages(err)) == 1 and "No space left on device" in err, (name, err)
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler"], name


def test_infer_on_a_full_disk(tmp_path, small_run, small_disk):
    json_path, config_path, checkpoint = small_run
    (small_disk / "filler").write_bytes(b"\0" * (395 << 10))
    done = _ifcn("infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
                 "--images", str(json_path), "--device", "cpu", "--out",
                 str(small_disk / "c.h5"))  # fmt: skip
    err = done.stderr
    assert done.returncode == 2 and len(_messages(err)) == 1 and "No space left" in err, err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


# --- D19: a killed run leaves a temporary that the next run sweeps -----------------------------


def test_a_killed_infer_leaves_a_temporary_the_rerun_sweeps(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(120):
        pixels = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    from tests.proposals.runs import checkpoint, small_config

    config_path, config = small_config(tmp_path)
    model = checkpoint(tmp_path, config)
    out = tmp_path / "out" / "candidates.h5"
    args = [sys.executable, "-m", "ifcn", "infer", "--config", str(config_path), "--checkpoint",
            str(model), "--image-dir", str(folder), "--device", "cpu", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".candidates.h5.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.002)
    # at once: the 120 images take a few tenths of a second, a fast machine's run could end
    # within a fixed wait (it did once: nothing was left to sweep)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = list(out.parent.glob(".candidates.h5.*.tmp"))
    assert len(left) == 1 and not out.exists()
    shard = out.parent / ".candidates-1.h5.elsewhere.1.0badcafe.tmp"  # another job's: kept
    shard.write_bytes(b"")
    assert cli.main(args[3:]) == 0
    with Candidates(out) as read:
        assert len(read) == 120
    assert sorted(p.name for p in out.parent.iterdir()) == [shard.name, "candidates.h5"]


# --- inference on a plain folder ---------------------------------------------------------------


def test_infer_on_a_folder_of_jpegs_writes_a_valid_proposal_file(tmp_path, capsys):
    from tests.proposals.runs import checkpoint, small_config

    rng = np.random.default_rng(4)
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    sizes = {"b/z.JPG": (50, 70), "a.jpeg": (40, 30), "b/c.jpg": (64, 64)}
    for name, size in sizes.items():
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden" / "x.jpg").write_text("skipped")
    config_path, config = small_config(tmp_path)
    model = checkpoint(tmp_path, config)
    candidates, proposals = tmp_path / "c.h5", tmp_path / "p.h5"
    base = ["infer", "--config", str(config_path), "--checkpoint", str(model), "--device", "cpu"]
    assert cli.main([*base, "--image-dir", str(folder), "--out", str(candidates)]) == 0
    assert cli.main(["nms", "--candidates", str(candidates), "--out", str(proposals)]) == 0
    with Proposals(proposals) as read:
        assert read.image_ids.tolist() == [1, 2, 3]
        names = [read.file_name(i) for i in (1, 2, 3)]
        assert names == ["a.jpeg", "b/c.jpg", "b/z.JPG"]
        assert [read.size(i) for i in (1, 2, 3)] == [sizes[n] for n in names]
        assert all(len(read.get(i)) > 0 for i in (1, 2, 3))
        assert read.attrs["dataset"] == str(folder)
    # pictures of every photo: no model, no annotations
    pictures = tmp_path / "pictures"
    code = cli.main(["viz", "--each", "--proposals", str(proposals), "--image-root", str(folder),
                     "--top-n", "3", "--out", str(pictures)])  # fmt: skip
    assert code == 0
    drawn = sorted(str(p.relative_to(pictures)) for p in pictures.rglob("*.png"))
    assert drawn == ["a.jpeg.png", "b/c.jpg.png", "b/z.JPG.png"]  # <file_name>.png
    assert np.asarray(Image.open(pictures / "b" / "z.JPG.png")).shape == (50, 70, 3)
    code = cli.main(["viz", "--each", "--proposals", str(proposals), "--image-root",
                     str(tmp_path), "--out", str(pictures)])  # fmt: skip
    _one_line_failure(capsys, code, tmp_path / "a.jpeg")
    capsys.readouterr()
    (folder / "b" / "c.jpg").write_bytes(b"\xff\xd8 broken")
    code = cli.main([*base, "--image-dir", str(folder), "--out", str(tmp_path / "x.h5")])
    _one_line_failure(capsys, code, folder / "b" / "c.jpg")
    empty = tmp_path / "nothing"
    empty.mkdir()
    code = cli.main([*base, "--image-dir", str(empty), "--out", str(tmp_path / "x.h5")])
    _one_line_failure(capsys, code, empty, "no image files")
    assert not (tmp_path / "x.h5").exists()
