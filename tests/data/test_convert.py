"""Converters of VOC, SBD, Penn-Fudan and COCO into COCO instances JSON (DESIGN §3).

Fixtures are written in each source's own format (palette PNGs, SBD's GTinst/GTcls structs,
Penn-Fudan PNGs, COCO with polygons, RLE and crowd); the converted masks are compared with the
source pixels, and formats rendered from one COCO JSON must convert back to it exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_dilation

from ifcn import cli
from ifcn.data.convert import convert, write_converted
from ifcn.data.formats import VOC_CLASSES, pennfudan
from ifcn.data.jsonio import load_json
from ifcn.data.rle import decode_rle, encode_mask
from ifcn.errors import IfcnError
from ifcn.evaluation.ar import evaluate
from tests.configs import settings
from tests.data import BORRAT

H, W = 48, 64
VOC_NAMES = ["2008_000001", "2008_000002", "2009_000010"]


# --- ground truth and renderers ---------------------------------------------------------------


def _label_maps() -> list[tuple[np.ndarray, list[int]]]:
    """Per image: an instance-index map (0 = background) and the category of each index."""
    a = np.zeros((H, W), np.int64)
    a[5:20, 4:30] = 1
    yy, xx = np.mgrid[:H, :W]
    a[((yy - 30) / 8.0) ** 2 + ((xx - 45) / 10.0) ** 2 <= 1] = 2
    a[38:44, 5:12] = 3
    b = np.zeros((H, W), np.int64)
    b[10:30, 10:25] = 1  # two touching instances of the same class
    b[10:30, 25:40] = 2
    b[35:45, 45:60] = 3
    b[40:45, 45:50] = 0  # an L shape
    c = np.zeros((H, W), np.int64)  # an image without instances
    return [(a, [15, 12, 15]), (b, [7, 7, 3]), (c, [])]


def make_coco(tmp: Path, names: list[str], ids: list[int], ext: str, person_only=False):
    """A COCO JSON (RLE masks) + image folder from `_label_maps`."""
    images_dir = tmp / "coco_images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for (labels, cats), name, image_id in zip(_label_maps(), names, ids, strict=True):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            images_dir / f"{name}{ext}"
        )
        images.append({"id": image_id, "file_name": f"{name}{ext}", "height": H, "width": W})
        for index, cat in enumerate(cats, start=1):
            rle = encode_mask(labels == index)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1 if person_only else cat,
                    "segmentation": rle,
                    "area": int((labels == index).sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(_bytes(rle))],
                    "iscrowd": 0,
                }
            )
    if person_only:
        categories = [{"id": 1, "name": "person"}]
    else:
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]
    coco = {"images": images, "annotations": anns, "categories": categories}
    return coco, images_dir


def _bytes(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode()}


def _index_maps(coco: dict, image: dict) -> tuple[np.ndarray, np.ndarray]:
    """Instance-index and class maps painted from the JSON's masks, in annotation order."""
    objects = np.zeros((image["height"], image["width"]), np.uint8)
    classes = np.zeros_like(objects)
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    for index, a in enumerate(anns, start=1):
        m = decode_rle(a["segmentation"]).astype(bool)
        objects[m] = index
        classes[m] = a["category_id"]
    return objects, classes


def _save_palette(arr: np.ndarray, path: Path) -> None:
    im = Image.fromarray(arr.astype(np.uint8))
    palette = np.random.default_rng(1).integers(0, 255, (256, 3), dtype=np.uint8)
    palette[255] = (224, 224, 192)  # VOC's void colour
    im.putpalette(palette.ravel().tolist())  # turns the grey image into mode 'P'
    assert im.mode == "P"
    im.save(path)


def render_voc(coco: dict, images_dir: Path, root: Path, split: str = "val") -> Path:
    """A VOC2012 folder; a 1-px void (255) band around every object, as VOC draws it."""
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for image in coco["images"]:
        name = Path(image["file_name"]).stem
        names.append(name)
        shutil.copy(images_dir / image["file_name"], root / "JPEGImages" / f"{name}.jpg")
        objects, classes = _index_maps(coco, image)
        void = binary_dilation(objects > 0) & (objects == 0)
        objects[void] = classes[void] = 255
        _save_palette(objects, root / "SegmentationObject" / f"{name}.png")
        _save_palette(classes, root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def render_sbd(coco: dict, images_dir: Path, root: Path, split: str = "train") -> Path:
    """An SBD dataset folder with GTinst/GTcls structs laid out as in benchmark.tgz."""
    for sub in ("img", "inst", "cls"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for image in coco["images"]:
        name = Path(image["file_name"]).stem
        names.append(name)
        shutil.copy(images_dir / image["file_name"], root / "img" / f"{name}.jpg")
        objects, classes = _index_maps(coco, image)
        cats = [a["category_id"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        boundaries = np.empty((len(cats), 1), dtype=object)
        for i in range(len(cats)):
            m = objects == i + 1
            boundaries[i, 0] = scipy.sparse.csc_matrix(m & ~_erode(m))
        gtinst = {
            "Segmentation": objects,
            "Boundaries": boundaries,
            "Categories": np.array(cats, np.uint8).reshape(-1, 1),
        }
        scipy.io.savemat(root / "inst" / f"{name}.mat", {"GTinst": gtinst})
        present = np.unique(classes[classes > 0]).astype(np.uint8).reshape(-1, 1)
        gtcls = {"Segmentation": classes, "Boundaries": boundaries, "CategoriesPresent": present}
        scipy.io.savemat(root / "cls" / f"{name}.mat", {"GTcls": gtcls})
    (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def _erode(m: np.ndarray) -> np.ndarray:
    return ~binary_dilation(~m)


def render_pennfudan(coco: dict, images_dir: Path, root: Path) -> Path:
    """A PennFudanPed folder: PNGImages/<name>.png and PedMasks/<name>_mask.png."""
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir(parents=True)
    for image in coco["images"]:
        name = Path(image["file_name"]).stem
        shutil.copy(images_dir / image["file_name"], root / "PNGImages" / f"{name}.png")
        objects, _ = _index_maps(coco, image)
        Image.fromarray(objects).save(root / "PedMasks" / f"{name}_mask.png")
    return root


def assert_same_instances(got: dict, want: dict) -> None:
    """Same images, annotation ids, categories and masks (IoU = 1) in both datasets."""
    assert [im["id"] for im in got["images"]] == [im["id"] for im in want["images"]]
    assert len(got["annotations"]) == len(want["annotations"])
    for g, w in zip(got["annotations"], want["annotations"], strict=True):
        assert (g["id"], g["image_id"], g["category_id"]) == (
            w["id"],
            w["image_id"],
            w["category_id"],
        )
        iou = mask_utils.iou([_bytes(g["segmentation"])], [_bytes(w["segmentation"])], [0])
        assert iou[0, 0] == 1.0
        assert g["area"] == w["area"] and g["bbox"] == w["bbox"] and g["iscrowd"] == 0


def _masks_equal_label_map(dataset: dict, image_id: int, labels: np.ndarray) -> None:
    anns = [a for a in dataset["annotations"] if a["image_id"] == image_id]
    indices = [i for i in np.unique(labels) if i not in (0, 255)]
    assert len(anns) == len(indices)
    for a, index in zip(anns, indices, strict=True):
        mask = labels == index
        np.testing.assert_array_equal(decode_rle(a["segmentation"]), mask)
        ys, xs = np.nonzero(mask)
        assert a["area"] == mask.sum()
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.fixture
def voc_coco(tmp_path):
    ids = [2008000001, 2008000002, 2009000010]
    return make_coco(tmp_path, VOC_NAMES, ids, ".jpg")


# --- source formats, pixel for pixel ----------------------------------------------------------


def test_voc_masks_equal_palette_pngs_and_void_is_the_ignore_rle(tmp_path, voc_coco):
    root = render_voc(*voc_coco, tmp_path / "VOC2012")
    conv = convert("voc", root, "val")
    d = conv.dataset
    assert conv.image_root == root / "JPEGImages"
    assert [c["name"] for c in d["categories"]] == list(VOC_CLASSES)
    assert [c["id"] for c in d["categories"]] == list(range(1, 21))
    for name, image in zip(VOC_NAMES, d["images"], strict=True):
        assert image["file_name"] == f"{name}.jpg" and (image["height"], image["width"]) == (H, W)
        objects = np.asarray(Image.open(root / "SegmentationObject" / f"{name}.png"))
        classes = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))
        _masks_equal_label_map(d, image["id"], objects)
        for a in (a for a in d["annotations"] if a["image_id"] == image["id"]):
            assert set(np.unique(classes[decode_rle(a["segmentation"]) > 0])) == {a["category_id"]}
        if (objects == 255).any():
            np.testing.assert_array_equal(decode_rle(image["ignore"]), objects == 255)
        else:
            assert "ignore" not in image
    assert d["images"][0]["id"] == 2008000001


def test_sbd_masks_equal_gtinst_segmentation_and_classes_come_from_categories(tmp_path, voc_coco):
    root = render_sbd(*voc_coco, tmp_path / "dataset")
    conv = convert("sbd", root, "train")
    assert conv.image_root == root / "img"
    assert not conv.notes  # GTcls agrees with GTinst
    for name, image in zip(VOC_NAMES, conv.dataset["images"], strict=True):
        gt = scipy.io.loadmat(root / "inst" / f"{name}.mat")["GTinst"][0, 0]
        _masks_equal_label_map(conv.dataset, image["id"], gt["Segmentation"])
        anns = [a for a in conv.dataset["annotations"] if a["image_id"] == image["id"]]
        assert [a["category_id"] for a in anns] == gt["Categories"].ravel().tolist()


def test_sbd_reports_gtcls_disagreeing_with_gtinst(tmp_path, voc_coco):
    root = render_sbd(*voc_coco, tmp_path / "dataset")
    name = VOC_NAMES[0]
    mat = scipy.io.loadmat(root / "inst" / f"{name}.mat")["GTinst"][0, 0]
    cats = mat["Categories"].copy()
    cats[0, 0] = 5
    scipy.io.savemat(
        root / "inst" / f"{name}.mat",
        {
            "GTinst": {
                "Segmentation": mat["Segmentation"],
                "Boundaries": mat["Boundaries"],
                "Categories": cats,
            }
        },
    )
    conv = convert("sbd", root, "train")
    assert conv.dataset["annotations"][0]["category_id"] == 5
    assert any("1 instances: GTinst.Categories differs" in n for n in conv.notes)


def test_pennfudan_masks_equal_pedmasks_and_split_is_fixed_by_sorted_name(tmp_path, monkeypatch):
    names = ["PennPed00002", "FudanPed00001", "FudanPed00007"]
    coco, images_dir = make_coco(tmp_path, names, [3, 1, 2], ".png", person_only=True)
    root = render_pennfudan(coco, images_dir, tmp_path / "PennFudanPed")
    monkeypatch.setattr(pennfudan, "VAL_SIZE", 2)
    val = convert("pennfudan", root, "val").dataset
    train = convert("pennfudan", root, "train").dataset
    assert [im["file_name"] for im in val["images"]] == ["FudanPed00001.png", "FudanPed00007.png"]
    assert [im["id"] for im in val["images"]] == [1, 2]
    assert [(im["id"], im["file_name"]) for im in train["images"]] == [(3, "PennPed00002.png")]
    assert val["categories"] == [{"id": 1, "name": "person", "supercategory": "person"}]
    for d in (val, train):
        for image in d["images"]:
            stem = Path(image["file_name"]).stem
            labels = np.asarray(Image.open(root / "PedMasks" / f"{stem}_mask.png"))
            _masks_equal_label_map(d, image["id"], labels)


def _coco_source(tmp_path: Path) -> tuple[Path, Path]:
    """A COCO JSON with a polygon, a compressed RLE, an uncompressed crowd RLE, unsorted ids."""
    images_dir = tmp_path / "val"
    images_dir.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (W, H)).save(images_dir / name)
    crowd = np.zeros((H, W), np.uint8)
    crowd[30:40, 2:60] = 1
    rect = np.zeros((H, W), np.uint8)
    rect[2:12, 40:60] = 1
    data = {
        "images": [
            {"id": 9, "file_name": "c.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "./a.jpg", "height": H, "width": W},
            {"id": 5, "file_name": "b.jpg", "height": H, "width": W},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 2,
                "category_id": 3,
                "iscrowd": False,
                "area": 999,
                "bbox": [0, 0, 1, 1],
                "segmentation": [[10, 10, 30, 10, 30, 25, 10, 25]],
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 3,
                "iscrowd": True,
                "area": 580,
                "bbox": [2, 30, 58, 10],
                "segmentation": _uncompressed_rle(crowd),
            },
            {
                "id": 7,
                "image_id": 5,
                "category_id": 1,
                "iscrowd": 0,
                "area": 200.0,
                "bbox": [40.0, 2.0, 20.0, 10.0],
                "segmentation": encode_mask(rect),
            },
            {
                "id": 8,
                "image_id": 9,
                "category_id": 1,
                "iscrowd": 0,
                "area": 200.0,
                "bbox": [40.0, 2.0, 20.0, 10.0],
                "segmentation": encode_mask(rect),
            },
        ],
        "categories": [
            {"id": 1, "name": "cat"},
            {"id": 3, "name": "dog"},
            {"id": 4, "name": "unused"},
        ],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    return path, images_dir


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths down the columns, starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    counts = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def test_coco_masks_equal_source_polygons_and_rles_crowd_kept(tmp_path):
    src, images_dir = _coco_source(tmp_path)
    raw = json.loads(src.read_text())
    conv = convert("coco", None, json_path=src, images=images_dir)
    d = conv.dataset
    by_id = {a["id"]: a for a in d["annotations"]}
    assert sorted(by_id) == [1, 2, 7, 8]
    for a in raw["annotations"]:
        want = mask_utils.decode(
            mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], H, W))
            if isinstance(a["segmentation"], list)
            else mask_utils.frPyObjects(a["segmentation"], H, W)
            if isinstance(a["segmentation"]["counts"], list)
            else _bytes(a["segmentation"])
        )
        got = by_id[a["id"]]
        np.testing.assert_array_equal(decode_rle(got["segmentation"]), want)
        assert isinstance(got["segmentation"]["counts"], str)
        assert got["area"] == int(want.sum())
        ys, xs = np.nonzero(want)
        assert got["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert by_id[2]["iscrowd"] == 1 and by_id[1]["iscrowd"] == 0
    assert type(by_id[2]["iscrowd"]) is int
    assert [c["name"] for c in d["categories"]] == ["cat", "dog"]
    assert d["images"][1]["file_name"] == "a.jpg"
    text = "\n".join(conv.notes)
    assert "2 boolean iscrowd" in text and "4 'unused'" in text
    assert "1 polygon segmentations encoded as RLE" in text
    assert "file names made plain" in text


def test_coco_first_n_keeps_the_first_sorted_image_ids(tmp_path):
    src, images_dir = _coco_source(tmp_path)
    d = convert("coco", None, json_path=src, images=images_dir, first_n=2).dataset
    assert [im["id"] for im in d["images"]] == [2, 5]
    assert sorted(a["id"] for a in d["annotations"]) == [1, 2, 7]


def test_coco_polygon_parts_under_three_points_are_dropped_not_fatal(tmp_path):
    src, images_dir = _coco_source(tmp_path)
    data = json.loads(src.read_text())
    data["annotations"][0]["segmentation"].append([1, 1, 5, 5])  # two points: a line
    data["annotations"][3]["segmentation"] = [[1, 1, 5, 5]]  # nothing left: dropped
    src.write_text(json.dumps(data))
    conv = convert("coco", None, json_path=src, images=images_dir)
    assert sorted(a["id"] for a in conv.dataset["annotations"]) == [1, 2, 7]
    alone = mask_utils.frPyObjects([[10, 10, 30, 10, 30, 25, 10, 25]], H, W)
    assert conv.dataset["annotations"][0]["area"] == mask_utils.area(mask_utils.merge(alone))
    assert "2 polygon parts with fewer than 3 points dropped" in conv.notes
    assert "1 annotations with an empty mask dropped" in conv.notes


def test_coco_unreadable_segmentation_names_the_annotation(tmp_path):
    src, images_dir = _coco_source(tmp_path)
    data = json.loads(src.read_text())
    data["annotations"][2]["segmentation"] = {"counts": "abc"}
    src.write_text(json.dumps(data))
    with pytest.raises(IfcnError, match="annotation 7: segmentation is neither"):
        convert("coco", None, json_path=src, images=images_dir)


def test_coco_layout_is_found_from_root_and_split(tmp_path):
    src, _ = _coco_source(tmp_path)
    (tmp_path / "annotations").mkdir()
    src.rename(tmp_path / "annotations" / "instances_val.json")
    conv = convert("coco", tmp_path, "val")
    assert conv.image_root == tmp_path / "val" and len(conv.dataset["images"]) == 3


# --- round trips: every format rendered from one COCO JSON converts back to it ----------------


@pytest.mark.parametrize("fmt", ["voc", "sbd"])
def test_voc_and_sbd_rendered_from_coco_convert_back_to_it(tmp_path, voc_coco, fmt):
    coco, images_dir = voc_coco
    if fmt == "voc":
        root, split = render_voc(coco, images_dir, tmp_path / "VOC2012", "val"), "val"
    else:
        root, split = render_sbd(coco, images_dir, tmp_path / "dataset", "train"), "train"
    assert_same_instances(convert(fmt, root, split).dataset, coco)


def test_pennfudan_rendered_from_coco_converts_back_to_it(tmp_path):
    names = ["FudanPed00001", "FudanPed00002", "PennPed00001"]
    coco, images_dir = make_coco(tmp_path, names, [1, 2, 3], ".png", person_only=True)
    root = render_pennfudan(coco, images_dir, tmp_path / "PennFudanPed")
    assert_same_instances(convert("pennfudan", root, "all").dataset, coco)


def test_coco_passthrough_of_a_converted_json_is_the_identity(tmp_path, voc_coco):
    coco, images_dir = voc_coco
    src = tmp_path / "in.json"
    src.write_text(json.dumps(coco))
    assert_same_instances(convert("coco", None, json_path=src, images=images_dir).dataset, coco)


def test_two_worker_processes_give_the_same_json(tmp_path, voc_coco):
    root = render_voc(*voc_coco, tmp_path / "VOC2012")
    assert convert("voc", root, "val", workers=2).dataset == convert("voc", root, "val").dataset


def test_exclude_drops_listed_images(tmp_path, voc_coco):
    root = render_sbd(*voc_coco, tmp_path / "dataset")
    listed = tmp_path / "val.txt"
    listed.write_text("2008_000002\n2011_000001\n")
    conv = convert("sbd", root, "train", exclude=listed)
    assert [im["id"] for im in conv.dataset["images"]] == [2008000001, 2009000010]
    assert "excluded 1 images" in conv.notes[0]


# --- the CLI: output, image root, bad input -----------------------------------------------------


def test_cli_writes_json_with_image_root_that_check_accepts(tmp_path, voc_coco, capsys):
    root = render_voc(*voc_coco, tmp_path / "VOC2012")
    out = tmp_path / "out" / "voc_val.json"
    argv = ["data", "convert", "--format", "voc", "--root", str(root), "--split", "val"]
    assert cli.main([*argv, "--out", str(out), "--workers", "1"]) == 0
    d = load_json(out)
    assert (out.parent / d["info"]["image_root"]).resolve() == (root / "JPEGImages").resolve()
    printed = capsys.readouterr().out
    assert f"image root: {root / 'JPEGImages'}" in printed
    assert "3 images, 6 annotations, 20 categories" in printed
    assert f"recorded the check in {out}.checked.h5" in printed
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["voc_val.json", "voc_val.json.checked.h5"]
    assert cli.main(["data", "check", "--json", str(out), "--workers", "1"]) == 0


def _fails_with_one_line(
    argv: list[str], out: Path, capsys, *expected: str, workers: int = 1
) -> None:
    assert cli.main([*argv, "--out", str(out), "--workers", str(workers)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.splitlines()[-1]  # the lines before it are progress bars
    assert line.startswith("ifcn data convert: error: "), err
    for text in expected:
        assert text in line
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("workers", [1, 2])
def test_mask_png_of_another_size_than_its_image_fails_cleanly(tmp_path, voc_coco, capsys, workers):
    root = render_voc(*voc_coco, tmp_path / "VOC2012")
    bad = root / "SegmentationObject" / "2008_000002.png"
    _save_palette(np.zeros((H + 1, W), np.uint8), bad)
    argv = ["data", "convert", "--format", "voc", "--root", str(root), "--split", "val"]
    expected = (str(bad), "mask size 64x49 differs from its image 2008_000002.jpg (64x48)")
    _fails_with_one_line(argv, tmp_path / "o.json", capsys, *expected, workers=workers)


def test_mat_without_gtinst_fails_cleanly(tmp_path, voc_coco, capsys):
    root = render_sbd(*voc_coco, tmp_path / "dataset")
    bad = root / "inst" / "2009_000010.mat"
    scipy.io.savemat(bad, {"GTcls": {"Segmentation": np.zeros((H, W), np.uint8)}})
    argv = ["data", "convert", "--format", "sbd", "--root", str(root), "--split", "train"]
    _fails_with_one_line(argv, tmp_path / "o.json", capsys, str(bad), "no GTinst struct")


@pytest.mark.parametrize("section", ["images", "annotations"])
def test_coco_with_duplicate_ids_fails_cleanly(tmp_path, capsys, section):
    src, images_dir = _coco_source(tmp_path)
    data = json.loads(src.read_text())
    data[section][1]["id"] = data[section][0]["id"]
    src.write_text(json.dumps(data))
    argv = ["data", "convert", "--format", "coco", "--json", str(src), "--images", str(images_dir)]
    what = "image" if section == "images" else "annotation"
    _fails_with_one_line(argv, tmp_path / "o.json", capsys, str(src), f"duplicate {what} id")


def test_coco_with_missing_image_files_fails_cleanly(tmp_path, capsys):
    src, images_dir = _coco_source(tmp_path)
    (images_dir / "b.jpg").unlink()
    argv = ["data", "convert", "--format", "coco", "--json", str(src), "--images", str(images_dir)]
    _fails_with_one_line(argv, tmp_path / "o.json", capsys, "1 of 3 image files are missing")


# --- a real labelling-tool export ---------------------------------------------------------------


def test_borrat_export_is_normalised_and_then_passes_check(tmp_path, capsys):
    out = tmp_path / "borrat" / "valid.json"
    argv = ["data", "convert", "--format", "coco", "--root", str(BORRAT), "--split", "valid"]
    assert cli.main([*argv, "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "dropped 1 categories that no annotation uses: 0 'objects'" in printed
    assert "4 areas recomputed from the mask" in printed  # every area the export stored
    assert "4 file names begin with '-'" in printed
    assert "1 polygon segmentations encoded as RLE" in printed
    assert "1 bboxes recomputed as the mask's tight box" in printed
    d = load_json(out)
    assert d["categories"] == [{"id": 1, "name": "human", "supercategory": "objects"}]
    assert all(im["file_name"].startswith("-") for im in d["images"])
    for a in d["annotations"]:
        rle = _bytes(a["segmentation"])
        assert a["area"] == int(mask_utils.area(rle))
        assert a["bbox"] == mask_utils.toBbox(rle).tolist() and a["iscrowd"] == 0
    assert cli.main(["data", "check", "--json", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "check passed" in printed and "warning" not in printed


def test_borrat_with_boolean_iscrowd_is_accepted(tmp_path):
    data = json.loads((BORRAT / "train" / "_annotations.coco.json").read_text())
    for a in data["annotations"]:
        a["iscrowd"] = bool(a["iscrowd"])
    src = tmp_path / "train.json"
    src.write_text(json.dumps(data))
    conv = convert("coco", None, json_path=src, images=BORRAT / "train")
    assert {type(a["iscrowd"]) for a in conv.dataset["annotations"]} == {int}
    assert f"{len(data['annotations'])} boolean iscrowd values written as 0/1" in conv.notes
    write_converted(conv, tmp_path / "out.json")
    assert len(load_json(tmp_path / "out.json")["images"]) == 4


# --- official files keep their published fields (issue 23, item 24) ---------------------------


def test_official_coco_keeps_its_published_area_and_bbox(tmp_path):
    """A JSON in COCO's own layout is an official dataset: its area and bbox stay as published
    (so AR by object size is COCOeval's on the official file); exports are repaired."""
    src, images_dir = _coco_source(tmp_path)
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    data = json.loads(src.read_text())
    data["images"][1]["file_name"] = "a.jpg"
    data["annotations"][0]["area"] = 1100.0  # medium; the mask has 300 pixels: small
    official = root / "annotations" / "instances_val.json"
    official.write_text(json.dumps(data))
    shutil.move(images_dir, root / "val")

    kept = convert("coco", root, "val")
    by_id = {a["id"]: a for a in kept.dataset["annotations"]}
    assert (by_id[1]["area"], by_id[1]["bbox"]) == (1100.0, [0, 0, 1, 1])
    assert kept.dataset["info"]["area_bbox"] == "published"
    assert "1 published areas differ from the mask area by more than 1% (kept)" in kept.notes
    assert "1 of them in another COCO size class than the mask's (kept)" in kept.notes
    for repaired in (
        convert("coco", None, json_path=official, images=root / "val"),
        convert("coco", root, "val", area_bbox="mask"),
    ):
        first = next(a for a in repaired.dataset["annotations"] if a["id"] == 1)
        assert (first["area"], first["bbox"]) == (300, [10.0, 10.0, 20.0, 15.0])
        assert "1 areas recomputed from the mask (stored value off by more than 1%)" in (
            repaired.notes
        )

    out = tmp_path / "val.json"
    write_converted(kept, out)
    results = tmp_path / "results.json"
    results.write_text(json.dumps([
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.5,
         "segmentation": a["segmentation"]}
        for a in kept.dataset["annotations"] if not a["iscrowd"]
    ]))  # fmt: skip
    at = settings("evaluate")
    published, converted = evaluate(official, results, at), evaluate(out, results, at)
    assert published.num_gt == converted.num_gt and published.num_gt["medium"] == 1
    np.testing.assert_array_equal(published.recall, converted.recall)


def test_area_bbox_applies_to_coco_only(tmp_path, voc_coco):
    root = render_voc(*voc_coco, tmp_path / "VOC2012")
    with pytest.raises(IfcnError, match="--area-bbox applies to --format coco only"):
        convert("voc", root, "val", area_bbox="published")
