"""The COCO instances JSON door (`validate_instances`): each kind of bad record is refused with a
line naming it, and the same file is refused by every stage that reads it (issue 16)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import cli
from ifcn.data.dataset import CocoInstances
from ifcn.data.instances import read_instances, validate_instances
from ifcn.data.rle import MAX_PIXELS, encode_mask, rle_text_faults
from ifcn.errors import IfcnError

H, W = 20, 30


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return counts if flat[0] == 0 else [0, *counts]


def _corrupt(counts: str) -> str:
    """A compressed RLE text with one character changed so that pycocotools decodes a mask far
    larger than its image (issue 16, D3)."""
    for k in range(len(counts)):
        for c in "ooO9":
            text = counts[:k] + c + counts[k + 1 :]
            area = int(mask_utils.area({"size": [H, W], "counts": text.encode()}))
            if area > H * W:
                return text
    raise AssertionError("no corruption found")


def dataset() -> dict:
    """One 20x30 image with an RLE object, a polygon object and a crowd region."""
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": encode_mask(_mask(2, 8, 3, 12)), "area": 54, "bbox": [3, 2, 9, 6]},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": [[15, 10, 25, 10, 25, 18, 15, 18]]},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": _uncompressed(_mask(0, 5, 20, 30))}},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }  # fmt: skip


def test_a_clean_dataset_passes_without_quirks():
    instances = validate_instances(dataset(), "d.json")
    assert sorted(instances.images) == [1] and len(instances.annotations) == 3
    assert not instances.findings.quirks


def _set(path: str, value):
    """A mutation: set dataset()[a][i][b] (dotted path) to value."""

    def mutate(d: dict) -> None:
        *keys, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = d
        for key in keys:
            target = target[key]
        target[last] = value

    return mutate


CORRUPT = _corrupt(encode_mask(_mask(2, 8, 3, 12))["counts"])
BAD = {
    # images
    "image id float": (_set("images.0.id", 1.0), "images[0] has no integer id"),
    "image id bool": (_set("images.0.id", True), "images[0] has no integer id"),
    "image id string": (_set("images.0.id", "1"), "images[0] has no integer id"),
    "image id list": (_set("images.0.id", [1]), "images[0] has no integer id"),
    "image height zero": (_set("images.0.height", 0), "image 1: height and width"),
    "image width float": (_set("images.0.width", 30.5), "image 1: height and width"),
    "image width string": (_set("images.0.width", "30"), "image 1: height and width"),
    "image huge": (_set("images.0.width", MAX_PIXELS), f"exceeds {MAX_PIXELS} pixels"),
    "file name absolute": (_set("images.0.file_name", "/etc/hostname"), "is absolute"),
    "file name windows": (_set("images.0.file_name", "C:\\img\\a.png"), "is absolute"),
    "file name climbs": (_set("images.0.file_name", "x/../../a.png"), "contains '..'"),
    "file name backslash climb": (_set("images.0.file_name", "..\\a.png"), "contains '..'"),
    "file name empty": (_set("images.0.file_name", " "), "file_name is missing or empty"),
    "file name number": (_set("images.0.file_name", 7), "file_name is missing or empty"),
    "ignore of another size": (
        _set("images.0.ignore", encode_mask(np.zeros((H, W + 1), np.uint8))),
        "image 1: 'ignore' RLE size [20, 31]",
    ),
    "ignore corrupt": (
        _set("images.0.ignore", {"size": [H, W], "counts": CORRUPT}),
        "image 1: 'ignore' RLE runs cover",
    ),
    # categories
    "category id string": (_set("categories.0.id", "1"), "categories[0] has no integer id"),
    "category name number": (_set("categories.0.name", 3), "category 1: name is not a string"),
    # annotations: ids and references
    "annotation id float": (_set("annotations.0.id", 1.5), "annotations[0] has no integer id"),
    "annotation image list": (
        _set("annotations.0.image_id", [1]),
        "image_id [1] is not an integer",
    ),
    "annotation image float": (
        _set("annotations.0.image_id", 1.0),
        "image_id 1.0 is not an integer",
    ),
    "annotation image bool": (
        _set("annotations.0.image_id", True),
        "image_id True is not an integer",
    ),
    "annotation image unknown": (_set("annotations.0.image_id", 9), "unknown image_id 9"),
    "annotation category list": (
        _set("annotations.0.category_id", [1]),
        "category_id [1] is not an integer",
    ),
    "iscrowd two": (_set("annotations.0.iscrowd", 2), "iscrowd 2 is not 0/1"),
    "iscrowd float": (_set("annotations.0.iscrowd", 1.0), "iscrowd 1.0 is not 0/1"),
    # segmentations
    "no segmentation": (_set("annotations.0.segmentation", []), "annotation 1: no segmentation"),
    "segmentation string": (_set("annotations.0.segmentation", "abc"), "neither a polygon"),
    "rle without size": (_set("annotations.0.segmentation", {"counts": "PP"}), "neither"),
    "polygon odd": (_set("annotations.1.segmentation", [[1, 2, 3, 4, 5, 6, 7]]), "odd number"),
    "polygon of strings": (_set("annotations.1.segmentation", [["1", 2, 3, 4, 5, 6]]), "numbers"),
    "polygon of bools": (_set("annotations.1.segmentation", [[True, 2, 3, 4, 5, 6]]), "numbers"),
    "polygon nested": (_set("annotations.1.segmentation", [[[1, 2], 3, 4, 5, 6, 7]]), "numbers"),
    "polygon nan": (_set("annotations.1.segmentation", [[1, 2, float("nan"), 4, 5, 6]]), "finite"),
    "polygon inf": (_set("annotations.1.segmentation", [[1, 2, 3, float("inf"), 5, 6]]), "finite"),
    "polygon 1e12": (_set("annotations.1.segmentation", [[1, 2, 1e12, 4, 5, 6]]), "far outside"),
    "polygon -1e12": (_set("annotations.1.segmentation", [[1, -1e12, 3, 4, 5, 6]]), "far outside"),
    "rle of another size": (
        _set("annotations.0.segmentation", encode_mask(np.ones((H + 2, W), np.uint8))),
        "annotation 1: RLE size [22, 30] differs from its image's [20, 30]",
    ),
    "rle size floats": (_set("annotations.0.segmentation.size", [20.0, 30.0]), "not [height"),
    "rle counts corrupt": (_set("annotations.0.segmentation.counts", CORRUPT), "runs cover"),
    "rle counts garbage": (_set("annotations.0.segmentation.counts", "abc"), "RLE"),
    "rle counts empty": (_set("annotations.0.segmentation.counts", ""), "RLE counts are empty"),
    "rle counts cut": (_set("annotations.0.segmentation.counts", "0a"), "end inside a number"),
    "rle counts outside": (_set("annotations.0.segmentation.counts", "0p1"), "outside '0'..'o'"),
    "rle counts long number": (_set("annotations.0.segmentation.counts", "ooooooo0"), "longer"),
    "rle counts dict": (_set("annotations.0.segmentation.counts", {}), "neither a string"),
    "rle list negative": (_set("annotations.2.segmentation.counts", [-5, 605]), "negative run"),
    "rle list short": (_set("annotations.2.segmentation.counts", [10, 20]), "cover 30 pixels"),
    "rle list floats": (_set("annotations.2.segmentation.counts", [10.0, 590]), "integers"),
    # area and bbox
    "area nan": (_set("annotations.0.area", float("nan")), "area nan is not a finite"),
    "area negative": (_set("annotations.0.area", -1), "area -1 is not a finite"),
    "area string": (_set("annotations.0.area", "54"), "area '54' is not a finite"),
    "area beyond image": (_set("annotations.0.area", 30_784_626), "exceeds the image's 20x30"),
    "bbox short": (_set("annotations.0.bbox", [1, 2, 3]), "is not four finite numbers"),
    "bbox inf": (_set("annotations.0.bbox", [1, 2, float("inf"), 3]), "four finite numbers"),
    "bbox negative": (_set("annotations.0.bbox", [1, 2, -3, 3]), "negative width"),
    "bbox far": (_set("annotations.0.bbox", [1, 2, 19_394_164, 3]), "far outside"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_record_is_refused_with_a_line_naming_it(case):
    mutate, expected = BAD[case]
    data = dataset()
    mutate(data)
    with pytest.raises(IfcnError, match="^d.json: ") as err:
        validate_instances(data, "d.json")
    assert expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_collecting_lists_every_problem_and_keeps_the_good_records():
    data = dataset()
    data["annotations"][0]["segmentation"]["counts"] = CORRUPT
    data["annotations"][1]["segmentation"] = [[1, 2, 3]]
    instances = validate_instances(data, "d.json", collect=True)
    assert instances.findings.problems == [
        "annotation 2: a polygon has an odd number of coordinates (3)",
        f"annotation 1: RLE runs cover {_covered(CORRUPT)} pixels, the image has 600",
    ]
    assert [a["id"] for a in instances.annotations] == [3]


def _covered(text: str) -> int:
    fault = rle_text_faults([text], np.array([H * W]))[0]
    return int(fault.split()[3])


def test_corrupt_rle_text_is_what_pycocotools_decodes_into_an_impossible_mask():
    rle = {"size": [H, W], "counts": CORRUPT.encode()}
    assert mask_utils.area(rle) > H * W  # what convert, check and evaluate used to accept
    assert _covered(CORRUPT) != H * W


def test_tolerated_quirks_are_counted_not_refused():
    data = dataset()
    data["images"][0]["file_name"] = "sub\\a.png"
    data["annotations"][0]["iscrowd"] = False
    del data["annotations"][1]["iscrowd"]
    data["annotations"][1]["segmentation"] = [[15, 10, 35, 10, 25, 18], [1, 1, 2, 2]]
    quirks = validate_instances(data, "d.json").findings.quirks
    assert dict(quirks) == {
        "file names with '\\' separators or a leading './' (read as plain '/' paths)": 1,
        "iscrowd stored as a boolean": 1,
        "annotations without iscrowd (read as 0)": 1,
        "polygon parts with fewer than 3 points (left out)": 1,
        "polygons reaching outside their image (clipped)": 1,
    }


def test_nan_in_the_file_itself_is_not_json(tmp_path):
    data = dataset()
    data["annotations"][0]["area"] = float("nan")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))  # Python's json writes NaN; JSON has no such number
    with pytest.raises(IfcnError, match="not valid JSON"):
        read_instances(path)


# --- every door refuses the same file --------------------------------------------------------

DOORS = {
    "D3 corrupt RLE counts": (_set("annotations.0.segmentation.counts", CORRUPT), "runs cover"),
    "D5 odd polygon": (_set("annotations.1.segmentation", [[15, 10, 25, 10, 25]]), "odd number"),
    "D9 absolute file name": (_set("images.0.file_name", "/etc/hostname"), "is absolute"),
    "D9 climbing file name": (_set("images.0.file_name", "../a.png"), "contains '..'"),
    "D10 huge coordinate": (_set("annotations.1.segmentation", [[1, 2, 1e12, 4, 5, 6]]), "far"),
    "D16 image id list": (_set("annotations.0.image_id", [1]), "image_id [1] is not an integer"),
}


@pytest.fixture
def bad_file(tmp_path, request):
    """The dataset with one defect, its image a.png beside it (a real image), info.image_root."""
    mutate, expected = DOORS[request.param]
    data = dataset()
    mutate(data)
    data["info"] = {"image_root": "."}
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    return path, expected


def _one_line(capsys, stage: str, expected: str, path: Path) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"ifcn {stage}: error: {path}: "), err
    assert expected in line, line


@pytest.mark.parametrize("bad_file", list(DOORS), indirect=True)
def test_convert_refuses_it_and_writes_nothing(bad_file, tmp_path, capsys):
    path, expected = bad_file
    out = tmp_path / "out" / "converted.json"
    argv = ["data", "convert", "--format", "coco", "--json", str(path), "--images", str(tmp_path)]
    assert cli.main([*argv, "--out", str(out), "--workers", "1"]) == 2
    _one_line(capsys, "data convert", expected, path)
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize("bad_file", list(DOORS), indirect=True)
def test_check_lists_it_as_a_problem(bad_file, tmp_path, capsys):
    path, expected = bad_file
    out = tmp_path / "summary.csv"
    assert cli.main(["data", "check", "--json", str(path), "--workers", "1", "--out", str(out)])
    _one_line(capsys, "data check", expected, path)
    assert not out.exists()


@pytest.mark.parametrize("bad_file", list(DOORS), indirect=True)
def test_training_data_refuses_it(bad_file, tmp_path):
    path, expected = bad_file
    with pytest.raises(IfcnError, match=str(path)) as err:
        CocoInstances(path, tmp_path, scales=[20])
    assert expected in str(err.value)


@pytest.mark.parametrize("bad_file", list(DOORS), indirect=True)
def test_evaluation_refuses_it_as_ground_truth(bad_file, tmp_path, capsys):
    path, expected = bad_file
    results = tmp_path / "results.json"
    results.write_text("[]")
    out = tmp_path / "eval" / "ar.json"
    argv = ["evaluate", "--gt", str(path), "--proposals", str(results), "--out", str(out)]
    assert cli.main(argv) == 2
    _one_line(capsys, "evaluate", expected, path)
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "bad_file", ["D10 huge coordinate", "D3 corrupt RLE counts"], indirect=True
)
def test_classify_evaluation_refuses_it_as_ground_truth(bad_file, tmp_path):
    """In a process of its own, with a timeout: pycocotools given the raw file segfaults on the
    huge vertex, and reads a corrupt RLE past its buffer."""
    path, expected = bad_file
    results = tmp_path / "results.json"
    results.write_text("[]")
    out = tmp_path / "eval" / "segm_eval.json"
    argv = ["classify", "evaluate", "--gt", str(path), "--results", str(results), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "ifcn", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ifcn classify evaluate: error: {path}: ")
    assert expected in lines[0]
    assert not out.parent.exists()


def test_a_converted_json_is_validated_before_it_is_written(tmp_path):
    from ifcn.data.convert import write_converted
    from ifcn.data.formats import Converted

    data = dataset()
    data["annotations"][0]["segmentation"]["counts"] = CORRUPT
    out = tmp_path / "o.json"
    with pytest.raises(IfcnError, match="annotation 1: RLE runs cover"):
        write_converted(Converted(copy.deepcopy(data), tmp_path), out)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("stage", ["convert", "check"])
@pytest.mark.parametrize("workers", ["-1", "0"])
def test_workers_below_one_is_a_one_line_error(tmp_path, capsys, stage, workers):
    path = tmp_path / "d.json"
    data = {**dataset(), "info": {"image_root": "."}}
    path.write_text(json.dumps(data))
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    out = tmp_path / "out" / "o.json"
    if stage == "convert":
        argv = ["data", "convert", "--format", "coco", "--json", str(path), "--out", str(out)]
    else:
        argv = ["data", "check", "--json", str(path)]
    assert cli.main([*argv, "--workers", workers]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ifcn data {stage}: error: --workers must be at least 1, got {workers}"
    assert not out.parent.exists()


def test_collecting_does_not_repeat_a_refused_image_for_each_of_its_annotations():
    data = dataset()
    data["images"][0]["file_name"] = "/abs/a.png"
    instances = validate_instances(data, "d.json", collect=True)
    assert len(instances.findings.problems) == 1 and "is absolute" in instances.findings.problems[0]
    assert not instances.images and not instances.annotations
