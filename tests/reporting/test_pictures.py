"""Pictures: proposals on the image (Fig. 8), score maps with assembled instances (Fig. 5), and
the report's pictures that `ifcn viz --pictures` draws from the model, proposals and GT."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import cli
from ifcn.config import load_config, validate_config
from ifcn.model import build_model
from ifcn.proposals.format import write_proposals
from ifcn.reporting.pictures import (
    best_proposals,
    distinct_colours,
    draw_proposals,
    draw_recall_picture,
    draw_score_maps,
)
from ifcn.reporting.summaries import read_figures_index
from ifcn.training.checkpoint import save_atomic


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_draw_proposals_tints_each_mask_in_its_own_colour():
    image = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 30:55, 5:30] = 1
    masks[1, 30:55, 45:75] = 1
    out = draw_proposals(image, masks, np.array([0.9, 0.4]), alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    colours = distinct_colours(2).astype(int)
    assert len({tuple(c) for c in colours}) == 2
    for i, (y, x) in enumerate([(45, 15), (45, 60)]):  # inside, away from outline and label
        np.testing.assert_allclose(out[y, x], (100 + colours[i]) / 2, atol=1)
    np.testing.assert_array_equal(out[5, 40], image[5, 40])  # outside every mask


def test_distinct_colours_beyond_the_palette_differ():
    colours = distinct_colours(25)
    assert colours.shape == (25, 3) and len({tuple(c) for c in colours}) == 25


def test_draw_score_maps_gives_one_picture_with_a_k_by_k_grid():
    rng = np.random.default_rng(0)
    picture = draw_score_maps(
        (rng.random((64, 80, 3)) * 255).astype(np.uint8),
        rng.random((9, 8, 10)),
        rng.random((2, 21, 21)),
        np.array([[0, 0, 40, 40], [20, 10, 70, 60]], np.float32),
        np.array([0.9, 0.7]),
    )
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8
    assert picture.shape[0] > 200 and picture.shape[1] > picture.shape[0]
    assert picture.std() > 10  # something was drawn


def test_cli_viz_writes_both_pictures(tmp_path, capsys):
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((rng.random((56, 72, 3)) * 255).astype(np.uint8)).save(images / "a.png")
    coco = {"images": [{"id": 4, "file_name": "a.png", "height": 56, "width": 72}],
            "annotations": [], "categories": []}  # fmt: skip
    json_path = tmp_path / "val.json"
    json_path.write_text(json.dumps(coco))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "data": {"val_images": str(images)},
        "model": {"backbone": "tiny", "k": 3, "m": 9, "head_channels": 8},
        "infer": {"scales": [40, 64], "max_size": 120},
    }))  # fmt: skip
    config = load_config(config_path)
    torch.manual_seed(0)
    checkpoint = save_atomic(
        {"model": build_model(config["model"]).state_dict(), "config": config, "iteration": 0},
        tmp_path / "model_final.pt",
    )
    masks = np.zeros((56, 72, 2), np.uint8, order="F")
    masks[5:30, 5:40, 0] = 1
    masks[20:50, 30:70, 1] = 1
    rles = [r["counts"] for r in mask_utils.encode(masks)]
    proposals = tmp_path / "proposals.h5"
    record = {"image_id": 4, "file_name": "a.png", "height": 56, "width": 72,
              "scores": np.array([0.8, 0.6]), "boxes": np.array([[5, 5, 40, 30], [30, 20, 70, 50]]),
              "rles": rles, "scales": np.array([0, 1])}  # fmt: skip
    write_proposals(proposals, [record], {"config": config, "checkpoint_sha256": "0" * 64,
                    "dataset": str(json_path), "scales": [40, 64], "k": 3, "m": 9})  # fmt: skip
    out = tmp_path / "viz"
    base = ["viz", "--config", str(config_path), "--checkpoint", str(checkpoint),
            "--images", str(json_path), "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert cli.main([*base, "--image-id", "4", "--proposals", str(proposals)]) == 0
    drawn = cv2.imread(str(out / "image4_proposals.png"))
    assert drawn.shape == (56, 72, 3)
    assert cv2.imread(str(out / "image4_score_maps.png")).shape[0] > 200
    capsys.readouterr()
    assert cli.main([*base, "--image-id", "5"]) == 2
    assert "no image with id 5" in capsys.readouterr().err


def test_best_proposal_per_object_and_missed_ones_are_drawn_as_fig8():
    objects = np.zeros((2, 40, 60), np.uint8)
    objects[0, 5:25, 5:25] = 1
    objects[1, 10:30, 35:55] = 1
    proposals = np.zeros((3, 40, 60), np.uint8)
    proposals[0, 5:25, 5:23] = 1  # IoU 0.9 with object 0
    proposals[1, 0:10, 30:60] = 1  # touches object 1 only a little
    proposals[2, 5:25, 5:15] = 1  # IoU 0.5 with object 0
    best, ious = best_proposals([_rle(m) for m in objects], [_rle(m) for m in proposals])
    assert best[0] == 0 and ious[0] == pytest.approx(0.9)
    assert ious[1] < 0.5
    image = np.full((40, 60, 3), 60, np.uint8)
    picture = draw_recall_picture(image, objects, proposals[best], ious)
    assert picture[20, 45].min() > 200  # the missed object is filled with white
    assert tuple(picture[10, 35]) == (230, 0, 0)  # and outlined in red
    assert not np.array_equal(picture[15, 10], image[15, 10])  # the found one is tinted
    empty_best, empty_ious = best_proposals([_rle(objects[0])], [])
    assert empty_best.tolist() == [-1] and empty_ious.tolist() == [0.0]


@pytest.fixture
def validation_run(tmp_path) -> dict:
    """Three validation images (one without objects), their GT, a model and proposals."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}
    masks = {}
    for image_id in (3, 5, 8):
        Image.fromarray((rng.random((56, 72, 3)) * 255).astype(np.uint8)).save(
            images / f"{image_id}.png"
        )
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.png", "height": 56,
                               "width": 72})  # fmt: skip
        if image_id == 3:  # an image without objects is drawn after those with objects
            continue
        mask = np.zeros((56, 72), np.uint8)
        mask[10:40, 10:40] = 1
        masks[image_id] = mask
        rle = _rle(mask)
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
        coco["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1,
                                    "iscrowd": 0, "area": 900, "bbox": [10, 10, 30, 30],
                                    "segmentation": segmentation})  # fmt: skip
    images_json = tmp_path / "val.json"
    images_json.write_text(json.dumps(coco))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "run": "demo",
        "data": {"val_images": str(images), "val_json": str(images_json)},
        "model": {"backbone": "tiny", "k": 3, "m": 9, "head_channels": 8},
        "infer": {"scales": [40, 64], "max_size": 120},
    }))  # fmt: skip
    config = load_config(config_path)
    torch.manual_seed(0)
    checkpoint = save_atomic(
        {"model": build_model(config["model"]).state_dict(), "config": config, "iteration": 0},
        tmp_path / "model_final.pt",
    )

    def proposals(path, names=None, ids=(3, 5, 8)):
        records = []
        for image_id in ids:
            found = masks.get(image_id, np.zeros((56, 72), np.uint8))
            name = (names or {}).get(image_id, f"{image_id}.png")
            records.append({"image_id": image_id, "file_name": name, "height": 56, "width": 72,
                            "scores": np.array([0.9]),
                            "boxes": np.array([[10, 10, 40, 40]], np.float32),
                            "rles": [_rle(found)["counts"]], "scales": np.array([0])})  # fmt: skip
        attrs = {"config": config, "checkpoint_sha256": "0" * 64, "dataset": str(images_json),
                 "scales": [40, 64], "k": 3, "m": 9}  # fmt: skip
        write_proposals(path, records, attrs)
        return path

    base = ["viz", "--config", str(config_path), "--checkpoint", str(checkpoint),
            "--images", str(images_json), "--device", "cpu"]  # fmt: skip
    return {"base": base, "proposals": proposals, "tmp": tmp_path}


def test_cli_viz_pictures_draws_the_reports_pictures_and_indexes_them(validation_run, capsys):
    out = validation_run["tmp"] / "figures"
    proposals = validation_run["proposals"](validation_run["tmp"] / "proposals.h5")
    argv = [*validation_run["base"], "--proposals", str(proposals), "--pictures", "2"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    pictures = read_figures_index(out / "figures.json")
    assert [p.path.name for p in pictures] == [
        "proposals-1.png",
        "score_maps-1.png",
        "proposals-2.png",
        "score_maps-2.png",
    ]
    assert [p.image_id for p in pictures] == [5, 5, 8, 8]  # images with objects first
    assert pictures[0].caption.startswith("Image 5 (`5.png`)") and "0 missed" in pictures[0].caption
    assert cv2.imread(str(out / "proposals-1.png")).shape == (56, 72, 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["figures.json", *(p.path.name for p in pictures)]
    )  # no temporaries


@pytest.mark.parametrize(
    "kind",
    ["missing image", "other file name"],
)
def test_cli_viz_refuses_proposals_of_another_image_set(validation_run, capsys, kind):
    path = validation_run["tmp"] / "other.h5"
    if kind == "missing image":
        validation_run["proposals"](path, ids=(5, 8))
    else:
        validation_run["proposals"](path, names={5: "train_000005.png"})
    out = validation_run["tmp"] / "figures"
    argv = [*validation_run["base"], "--proposals", str(path), "--out", str(out)]
    assert cli.main([*argv, "--pictures", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ifcn viz: error: {path}: ")
    assert "proposals of another image set?" in err
    assert not out.exists()
    if kind == "other file name":  # drawing one image refuses it too
        assert cli.main([*argv, "--image-id", "5"]) == 2
        assert "proposals of another image set?" in capsys.readouterr().err
        assert not out.exists()


def _photo_proposals(path, names, shape=(56, 72)):
    """proposals.h5 of photos ``names`` (ids 1..n), one proposal each, as `infer --image-dir`
    writes it (no GT)."""
    mask = np.zeros(shape, np.uint8)
    mask[10:30, 10:40] = 1
    records = [{"image_id": i, "file_name": name, "height": shape[0], "width": shape[1],
                "scores": np.array([0.9]), "boxes": np.array([[10, 10, 40, 30]], np.float32),
                "rles": [_rle(mask)["counts"]], "scales": np.array([0])}
               for i, name in enumerate(names, start=1)]  # fmt: skip
    attrs = {"config": validate_config({}), "checkpoint_sha256": "0" * 64,
             "dataset": "photos", "scales": [40], "k": 3, "m": 9}  # fmt: skip
    write_proposals(path, records, attrs)
    return path


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["absolute", "dot-dot"])
def test_viz_each_writes_nothing_outside_out(tmp_path, capsys, kind):
    """A proposals file naming /x/victim.png or ../../victim.png once overwrote that file."""
    rng = np.random.default_rng(0)
    victim = tmp_path / "victim.png"
    Image.fromarray((rng.random((56, 72, 3)) * 255).astype(np.uint8)).save(victim)
    before = victim.read_bytes()
    images, out = tmp_path / "a" / "images", tmp_path / "b" / "out"
    images.mkdir(parents=True)
    Image.open(victim).save(images / "ok.png")
    name = str(victim) if kind == "absolute" else "../../victim.png"
    proposals = _photo_proposals(tmp_path / "proposals.h5", ["ok.png", name])
    files = _files(tmp_path)
    argv = ["viz", "--each", "--proposals", str(proposals), "--image-root", str(images),
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ifcn viz: error: {proposals}: image 2")
    assert ("is absolute" if kind == "absolute" else "contains '..'") in err
    assert victim.read_bytes() == before and _files(tmp_path) == files
    assert not out.exists()  # nothing drawn before the names were checked


def test_viz_each_keeps_every_photo_apart(tmp_path, capsys):
    """x.jpg and x.png once both became x.png; case-blind twins take the image id."""
    rng = np.random.default_rng(1)
    images, out = tmp_path / "photos", tmp_path / "out"
    (images / "sub").mkdir(parents=True)
    names = ["X.jpg", "sub/y.png", "x.jpg", "x.png"]
    for name in names:
        Image.fromarray((rng.random((56, 72, 3)) * 255).astype(np.uint8)).save(images / name)
    proposals = _photo_proposals(tmp_path / "proposals.h5", names)
    argv = ["viz", "--each", "--proposals", str(proposals), "--image-root", str(images),
            "--out", str(out), "--top-n", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    assert [p.relative_to(out).as_posix() for p in _files(out)] == [
        "X.jpg.png", "sub/y.png.png", "x.jpg-3.png", "x.png.png"
    ]  # fmt: skip
    assert capsys.readouterr().out.split() == [
        str(out / n) for n in ("X.jpg.png", "sub/y.png.png", "x.jpg-3.png", "x.png.png")
    ]


def test_viz_each_refuses_a_link_out_of_out(tmp_path, capsys):
    images, out, elsewhere = tmp_path / "photos", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (images / "sub", out, elsewhere):
        folder.mkdir(parents=True)
    Image.new("RGB", (72, 56)).save(images / "sub" / "a.png")
    (out / "sub").symlink_to(elsewhere)
    proposals = _photo_proposals(tmp_path / "proposals.h5", ["sub/a.png"])
    argv = ["viz", "--each", "--proposals", str(proposals), "--image-root", str(images),
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 2
    assert "'sub/a.png.png' would lie outside" in capsys.readouterr().err
    assert not list(elsewhere.iterdir())


@pytest.mark.parametrize(
    "value,message",
    [("-50", "-50 is less than the minimum of 16"), ("0", "0 is less than the minimum of 16"),
     ("5000", "5000 is greater than the maximum of 4096"), ("1.5", "not an integer: '1.5'")],
)  # fmt: skip
def test_viz_scale_must_be_an_inference_scale(capsys, value, message):
    """--scale -50 once drew a 1x1 image and --scale 0 silently meant the default."""
    with pytest.raises(SystemExit) as info:
        cli.main(["viz", "--image-id", "1", "--out", "o", f"--scale={value}"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ifcn viz: error: argument --scale: {message}"
    )
