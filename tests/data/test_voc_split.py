"""The paper's VOC split (§4.1, issue 14): SBD's instances on the VOC 2012 train images for
training and on the VOC 2012 val images for evaluation, disjoint; the voc2012 workflow plans it.

A fake VOCdevkit + SBD tree: `ImageSets/Main/{train,val}.txt` list a few names, SBD annotates
most of them (`inst/*.mat` and `cls/*.mat` written with scipy.io.savemat, JPEGs in `img/`), and
SBD's own `train.txt` contains a VOC val image, as the real one does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ifcn import cli
from ifcn.config import load_config
from ifcn.data.datasets import convert_request
from ifcn.data.jsonio import load_json
from ifcn.data.overlap import require_disjoint
from ifcn.data.rle import decode_rle
from ifcn.errors import IfcnError

ROOT = Path(__file__).resolve().parents[2]
H, W = 40, 56
VOC_TRAIN = ["2008_000001", "2008_000002", "2008_000003"]  # SBD lacks 2008_000003
VOC_VAL = ["2009_000010", "2009_000011"]
SBD_OWN_TRAIN = ["2008_000001", "2009_000010"]  # overlaps VOC val, like the real SBD train


def _instances(seed: int) -> tuple[np.ndarray, list[int]]:
    """An instance map (0 background, 255 SBD's void) and the VOC class of each instance."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((H, W), np.uint8)
    classes = []
    for index in range(1, int(rng.integers(1, 4)) + 1):
        y, x = int(rng.integers(0, H - 12)), int(rng.integers(0, W - 12))
        labels[y : y + 12, x : x + 12] = index
        classes.append(int(rng.integers(1, 21)))
    labels[0, :] = 255
    return labels, classes


@pytest.fixture
def tree(tmp_path) -> dict:
    """resources/voc2012 as the downloads unpack it: VOCdevkit/ and benchmark_RELEASE/."""
    root = tmp_path / "resources" / "voc2012"
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    sbd = root / "benchmark_RELEASE" / "dataset"
    for folder in (main, sbd / "img", sbd / "inst", sbd / "cls"):
        folder.mkdir(parents=True)
    (main / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (main / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (sbd / "train.txt").write_text("\n".join(SBD_OWN_TRAIN) + "\n")
    truth = {}
    for seed, name in enumerate(VOC_TRAIN + VOC_VAL):
        if name == "2008_000003":
            continue
        labels, classes = _instances(seed)
        Image.new("RGB", (W, H), (seed * 20, 90, 30)).save(sbd / "img" / f"{name}.jpg")
        inst = {"Segmentation": labels, "Categories": np.array(classes, np.uint8).reshape(-1, 1)}
        scipy.io.savemat(sbd / "inst" / f"{name}.mat", {"GTinst": inst})
        per_pixel = np.zeros_like(labels)
        for index, category in enumerate(classes, start=1):
            per_pixel[labels == index] = category
        per_pixel[labels == 255] = 255
        scipy.io.savemat(sbd / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": per_pixel}})
        truth[name] = (labels, classes)
    return {"root": root, "main": main, "sbd": sbd, "truth": truth}


def _convert(tree: dict, split: str, capsys) -> tuple[Path, str]:
    out = tree["root"] / f"sbd_voc2012_{split}.json"
    argv = [
        "data", "convert", "--format", "sbd", "--root", str(tree["sbd"]),
        "--image-list", str(tree["main"] / f"{split}.txt"), "--out", str(out), "--workers", "1",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out, capsys.readouterr().out


def test_voc_train_and_val_convert_to_disjoint_sets_with_sbds_instances(tree, capsys):
    train, printed_train = _convert(tree, "train", capsys)
    val, printed_val = _convert(tree, "val", capsys)
    assert "2 images" in printed_train and "2 images" in printed_val
    assert "SBD annotates 2 of the 3 images listed" in printed_train
    assert "SBD annotates 2 of the 2 images listed" in printed_val
    ids = {s: {im["id"] for im in load_json(p)["images"]} for s, p in [("t", train), ("v", val)]}
    assert ids == {"t": {2008000001, 2008000002}, "v": {2009000010, 2009000011}}
    for path in (train, val):
        data = load_json(path)
        assert (path.parent / data["info"]["image_root"]).resolve() == tree["sbd"] / "img"
        for image in data["images"]:
            labels, classes = tree["truth"][Path(image["file_name"]).stem]
            anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            assert [a["category_id"] for a in anns] == classes
            for index, ann in enumerate(anns, start=1):
                np.testing.assert_array_equal(decode_rle(ann["segmentation"]), labels == index)
    assert require_disjoint(train, val) == 2
    argv = ["data", "check", "--json", str(val), "--disjoint-from", str(train), "--workers", "1"]
    assert cli.main(argv) == 0


def test_sbds_own_train_shares_an_image_with_voc_val_and_is_refused(tree, capsys):
    own = tree["root"] / "sbd_train.json"
    argv = ["data", "convert", "--format", "sbd", "--root", str(tree["sbd"]), "--split", "train"]
    assert cli.main([*argv, "--out", str(own), "--workers", "1"]) == 0
    val, _ = _convert(tree, "val", capsys)
    with pytest.raises(IfcnError, match=r"1 of its 2 images are also training images .*2009000010"):
        require_disjoint(own, val)
    argv = ["data", "check", "--json", str(val), "--disjoint-from", str(own), "--workers", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"ifcn data check: error: {val}: 1 of its 2 images are also")


def test_images_of_equal_ids_but_different_files_are_not_shared(tmp_path):
    """Labelling-tool exports number each split from 0: equal ids are not the same image."""
    for split in ("train", "valid"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (W, H)).save(tmp_path / split / f"{split}.jpg")
        data = {
            "info": {"image_root": split},
            "images": [{"id": 0, "file_name": f"{split}.jpg", "height": H, "width": W}],
            "annotations": [],
            "categories": [{"id": 1, "name": "person"}],
        }
        (tmp_path / f"{split}.json").write_text(json.dumps(data))
    assert require_disjoint(tmp_path / "train.json", tmp_path / "valid.json") == 1
    with pytest.raises(IfcnError, match="1 of its 1 images"):
        require_disjoint(tmp_path / "train.json", tmp_path / "train.json")


def test_the_voc2012_workflow_plans_the_paper_split(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [str(bin_dir / "snakemake"), "-n", "-p", "--configfile", "config/voc2012.yaml",
         "--directory", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = load_config(ROOT / "config" / "voc2012.yaml")["data"]
    lists = "resources/voc2012/VOCdevkit/VOC2012/ImageSets/Main"
    for split in ("train", "val"):
        command = f"ifcn data convert --config results/voc2012/config.yaml --split {split}"
        assert command in result.stdout
        assert f"--out resources/voc2012/{split}.json" in result.stdout
        # what the command converts: SBD's instances on VOC 2012's Main lists
        assert convert_request(data, split) == {
            "fmt": "sbd",
            "root": "resources/voc2012/benchmark_RELEASE/dataset",
            "split": None,
            "image_list": f"{lists}/{split}.txt",
            "first_n": None,
        }


def test_a_list_of_images_sbd_does_not_annotate_is_refused(tree, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("2011_000001\n2011_000002\n")
    out = tmp_path / "o.json"
    argv = ["data", "convert", "--format", "sbd", "--root", str(tree["sbd"])]
    assert cli.main([*argv, "--image-list", str(other), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "SBD annotates none of the 2 images listed" in err and not out.exists()
