"""Checked annotations (issue 24): a check is recorded once and trusted after, a JSON changed
since is refused, and training reads the same samples from the record as from the JSON."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import cli
from ifcn.data import image_files
from ifcn.data.dataset import CocoInstances
from ifcn.data.image import load_image, resize_image, resize_masks
from ifcn.data.instances import read_image_table, read_instances
from ifcn.data.masks import mask_boxes
from ifcn.data.rle import encode_mask, rle_area_bbox
from ifcn.data.store import checked_annotations, open_store, proof_path
from ifcn.errors import IfcnError
from tests.configs import write_config

SIZES = {1: (40, 60), 2: (50, 50), 5: (36, 48), 8: (40, 60)}  # image id -> (h, w)


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F").astype(np.int8)
    counts = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def coco_like(root: Path, outside: bool = False) -> Path:
    """Images of three sizes with polygons (one in two parts, one with a part of two points
    and, if `outside`, reaching outside its image), compressed RLE, an uncompressed crowd
    region, an image without annotations; ids unsorted."""
    rng = np.random.default_rng(3)
    (root / "img").mkdir(parents=True)
    images = []
    for image_id, (h, w) in SIZES.items():
        name = f"img/{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    anns = [
        (1, 5, 1, [[4.5, 3.2, 30.1, 4.0, 26.7, 20.9, 6.0, 18.5]], 0),
        (2, 5, 3, [[2, 22, 12, 22, 12, 34, 2, 34], [30, 20, 46, 21, 40, 33]], 0),
        (3, 1, 1, encode_mask(_box(40, 60, 5, 25, 10, 40)), 0),
        (4, 1, 3, _uncompressed(_box(40, 60, 28, 40, 0, 60)), 1),
        (9, 1, 1, [[40, 10, 58, 12, 61 if outside else 59, 30, 44, 28], [1, 1, 3, 3]], 0),
        (7, 2, 3, [[10, 10, 40, 12, 35, 45, 12, 40]], 0),
        (8, 2, 1, encode_mask(_box(50, 50, 30, 48, 2, 20)), 1),
        (6, 5, 1, encode_mask(_box(36, 48, 1, 6, 40, 47)), 0),
    ]
    annotations = []
    for ann_id, image_id, category, segmentation, crowd in anns:
        annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": category,
            "segmentation": segmentation, "iscrowd": crowd,
        })  # fmt: skip
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "c"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _reference(json_path: Path, root: Path, key: tuple[int, int], scales, flip) -> dict:
    """The sample of (index, seed) as CocoInstances made it before the record (ifcn 0.x):
    pycocotools' COCO index of the validated JSON, its masks decoded per image."""
    instances = read_instances(json_path)
    coco = instances.coco()
    image_id = sorted(instances.images)[key[0]]
    rng = np.random.default_rng(key[1])
    short_side = scales[int(rng.integers(len(scales)))]
    flipped = bool(rng.random() < 0.5) and flip
    image = load_image(root / coco.imgs[image_id]["file_name"])
    anns = coco.imgToAnns.get(image_id, [])
    masks = (
        mask_utils.decode([a["segmentation"] for a in anns]).transpose(2, 0, 1)
        if anns
        else np.zeros((0, *image.shape[:2]), np.uint8)
    )
    image, scale = resize_image(image, short_side, None)
    masks = resize_masks(masks, image.shape[:2], scale)
    if flipped:
        masks = masks[:, :, ::-1]
    keep = masks.any((1, 2))
    masks = np.ascontiguousarray(masks[keep])
    anns = [a for a, k in zip(anns, keep, strict=True) if k]
    return {
        "masks": masks,
        "boxes": mask_boxes(masks),
        "iscrowd": [bool(a["iscrowd"]) for a in anns],
        "category_ids": [a["category_id"] for a in anns],
        "scale": scale,
        "flipped": flipped,
    }


def _same_samples(ds: CocoInstances, json_path: Path, root: Path, scales) -> None:
    for index in range(len(ds)):
        for seed in (0, 7, 12):
            got, want = ds[(index, seed)], _reference(json_path, root, (index, seed), scales, True)
            np.testing.assert_array_equal(got["masks"].numpy(), want["masks"])
            np.testing.assert_array_equal(got["boxes"].numpy(), want["boxes"])
            assert got["iscrowd"].tolist() == want["iscrowd"]
            assert got["category_ids"].tolist() == want["category_ids"]
            assert (got["scale"], got["flipped"]) == (want["scale"], want["flipped"])


@pytest.mark.parametrize("record", ["none", "data check", "run folder"])
def test_samples_from_the_record_equal_those_of_the_json(tmp_path, record):
    path = coco_like(tmp_path, outside=record != "data check")
    scales = [30, 50]
    if record == "data check":
        assert cli.main(["data", "check", "--json", str(path), "--images", str(tmp_path)]) == 0
    kwargs = {}
    if record == "run folder":
        first = CocoInstances(path, tmp_path, scales, flip=True, cache_dir=tmp_path / "run")
        first.verify_images()
        kwargs["store"] = open_store(first.record(tmp_path / "run"), path)
    ds = CocoInstances(path, tmp_path, scales, flip=True, **kwargs)
    assert ds.store.checked_by == {"none": "ifcn train", "data check": "ifcn data check",
                                   "run folder": "ifcn train"}[record]  # fmt: skip
    assert (ds.store.path is None) == (record == "none")
    _same_samples(ds, path, tmp_path, scales)


def test_samples_of_the_tiny_dataset_are_unchanged(tiny_data):
    ds = CocoInstances(tiny_data / "train.json", tiny_data / "images", [64, 96], flip=True)
    _same_samples(ds, tiny_data / "train.json", tiny_data / "images", [64, 96])


@pytest.mark.parametrize("workers", [1, 2])
def test_masks_made_in_bulk_equal_those_made_one_by_one(tmp_path, workers):
    instances = read_instances(coco_like(tmp_path, outside=True))
    masks = instances.encode_masks(workers)
    for k, ann in enumerate(instances.annotations):
        rle = instances.rle(ann)
        assert masks.counts[k] == rle["counts"].encode()
        area, bbox = rle_area_bbox(rle)
        assert masks.area[k] == area and masks.bbox[k].tolist() == bbox
    assert masks.clipped.tolist() == [a["id"] == 9 for a in instances.annotations]
    assert masks.dropped_parts.tolist() == [a["id"] == 9 for a in instances.annotations]


def _check(path: Path, root: Path) -> None:
    assert cli.main(["data", "check", "--json", str(path), "--images", str(root)]) == 0


def test_a_json_changed_after_its_check_is_refused_at_training(tmp_path, capsys):
    path = coco_like(tmp_path)
    _check(path, tmp_path)
    path.write_text(path.read_text().replace('"name": "c"', '"name": "d"'))
    data = {"train_json": str(path), "train_images": str(tmp_path)}
    config = write_config(tmp_path, tmp_path, data=data)
    out = tmp_path / "run"
    capsys.readouterr()
    assert cli.main(["train", "--config", str(config), "--out", str(out), "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{path}: changed since `ifcn data check` checked it" in err[0]
    assert f"run `ifcn data check --json {path}`" in err[0]
    assert not out.exists()


def test_a_record_of_another_json_is_refused(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _check(coco_like(first), first)
    path = coco_like(second)
    data = json.loads(path.read_text())
    data["annotations"].pop()
    path.write_text(json.dumps(data))
    shutil.copy(proof_path(first / "instances.json"), proof_path(path))
    with pytest.raises(IfcnError, match="changed since `ifcn data check` checked it"):
        CocoInstances(path, second, [40])


def test_a_damaged_record_is_refused(tmp_path):
    path = coco_like(tmp_path)
    _check(path, tmp_path)
    record = proof_path(path)
    with h5py.File(record, "r") as f:
        at = f["mask_area"].id.get_offset()  # a mask area: 1 pixel more
    raw = bytearray(record.read_bytes())
    raw[at] ^= 0x01
    record.write_bytes(bytes(raw))
    with pytest.raises(IfcnError, match=rf"{record}: damaged .*run `ifcn data check --json"):
        checked_annotations(path, reader="ifcn train")


def test_a_failed_check_leaves_no_record(tmp_path, capsys):
    path = coco_like(tmp_path)
    _check(path, tmp_path)
    assert proof_path(path).is_file()
    data = json.loads(path.read_text())
    data["annotations"][0]["id"] = 2
    path.write_text(json.dumps(data))
    assert cli.main(["data", "check", "--json", str(path), "--images", str(tmp_path)]) == 2
    assert not proof_path(path).exists()


def test_a_never_checked_json_is_validated_once_per_run_folder(tmp_path, monkeypatch):
    path = coco_like(tmp_path)
    run = tmp_path / "run"
    first = CocoInstances(path, tmp_path, [40], cache_dir=run)
    assert first.store.path is None  # nothing written before the images are read
    first.verify_images()
    record = first.record(run)
    assert record.parent == run and not proof_path(path).exists()
    monkeypatch.setattr("ifcn.data.store.read_instances", lambda *a: pytest.fail("validated"))
    again = CocoInstances(path, tmp_path, [40], cache_dir=run)
    assert again.store.path == record and again.store.images_verified
    path.write_text(path.read_text() + " ")  # another file: validated again, not refused
    monkeypatch.undo()
    assert CocoInstances(path, tmp_path, [40], cache_dir=run).store.path is None


def test_only_image_files_changed_since_the_check_are_read_again(tmp_path, monkeypatch):
    path = coco_like(tmp_path)
    _check(path, tmp_path)
    read = []
    real = image_files.image_fault
    monkeypatch.setattr(
        "ifcn.data.dataset.image_fault", lambda p, h, w: read.append(Path(p).name) or real(p, h, w)
    )
    CocoInstances(path, tmp_path, [40]).verify_images()
    assert read == []
    (tmp_path / "img" / "2.png").write_bytes((tmp_path / "img" / "2.png").read_bytes()[:60])
    with pytest.raises(IfcnError, match=r"img/2.png: unreadable .*listed in"):
        CocoInstances(path, tmp_path, [40]).verify_images()
    assert read == ["2.png"]


def test_a_truncated_jpeg_is_unreadable_and_a_whole_one_passes(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8)).save(path)
    assert image_files.image_fault(path, 30, 40) is None
    assert "30x40" in image_files.image_fault(path, 40, 30)
    path.write_bytes(path.read_bytes()[:-200])
    assert "truncated" in image_files.image_fault(path, 30, 40)


def test_backslash_file_names_are_read_as_plain_paths(tmp_path):
    path = coco_like(tmp_path)
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = ".\\img\\1.png"
    path.write_text(json.dumps(data))
    assert read_image_table(path)[1]["file_name"] == "img/1.png"
    ds = CocoInstances(path, tmp_path, [40])
    assert ds[0]["file_name"] == "img/1.png" and torch.is_tensor(ds[0]["image"])


def test_the_records_names_and_image_entries_are_those_of_the_json(tmp_path):
    """Read one at a time from the record's arrays (no list of 118k names or dicts of them in
    every rank): the same names and entries as the JSON's."""
    path = coco_like(tmp_path)
    assert cli.main(["data", "check", "--json", str(path), "--images", str(tmp_path)]) == 0
    store = open_store(proof_path(path), path)
    table = read_image_table(path)
    names = store.file_names()
    assert len(names) == 4 and list(names) == [table[i]["file_name"] for i in sorted(table)]
    assert names[-1] == names[3] == store.file_name(3) and names[1:3] == list(names)[1:3]
    with pytest.raises(IndexError):
        names[4]
    images = store.image_set().images
    assert dict(images) == dict(images.items()) == store.image_table() == table
    assert list(images.values()) == [table[i] for i in sorted(table)]
    assert len(images) == 4 and 5 in images and 3 not in images
    with pytest.raises(KeyError):
        images[3]


def test_a_dataset_holds_no_python_object_per_image(tmp_path):
    """Every rank and DataLoader worker of a COCO training holds the dataset: its images are
    read from the record's arrays (memory-mapped, shared), not copied into lists."""
    path = coco_like(tmp_path)
    data = json.loads(path.read_text())
    first = data["images"][0]
    for k in range(3000):  # one file under many names
        name = f"img/many_{k}.png"
        (tmp_path / name).hardlink_to(tmp_path / first["file_name"])
        data["images"].append({**first, "id": 100 + k, "file_name": name})
    path.write_text(json.dumps(data))
    assert cli.main(["data", "check", "--json", str(path), "--images", str(tmp_path)]) == 0
    store = open_store(proof_path(path), path)
    tracemalloc.start()
    try:
        ds = CocoInstances(path, tmp_path, [30], store=store)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ds) == 3004 and ds.image_path(2999 + 100) == tmp_path / "img/many_2999.png"
    assert held < 3004 * 20  # its file stats (16 bytes an image), no list of ids, names, paths
