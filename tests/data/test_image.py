"""The one image loader (issue 23 items 5 and 16): every pixel format decodes to the 8-bit RGB
the network was trained on, or is refused in one line; only regular files are opened."""

from __future__ import annotations

import json
import os
import threading
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from ifcn.data.check import check_dataset
from ifcn.data.formats import image_size, read_index_png
from ifcn.data.image import load_image
from ifcn.errors import IfcnError

RNG = np.random.default_rng(0)
H, W = 24, 32


def _gradient16() -> np.ndarray:
    """16-bit values over the whole range, none of them a multiple of 256."""
    return (np.arange(H * W).reshape(H, W) * (65535 // (H * W)) + 7).astype(np.uint16)


def test_a_16_bit_grey_png_keeps_its_high_byte_instead_of_clipping_to_white(tmp_path):
    pixels = _gradient16()
    Image.fromarray(pixels).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"  # what Pillow's convert("RGB") clips to 255
    got = load_image(tmp_path / "grey16.png")
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.repeat((pixels >> 8).astype(np.uint8)[..., None], 3, axis=2))
    assert got.min() == 0 and got.max() > 250  # the image, not a blank one


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_pngs_keep_their_high_byte_as_opencv_reads_them(tmp_path, channels):
    pixels = (RNG.random((H, W, channels)) * 65535).astype(np.uint16)
    path = tmp_path / f"colour16-{channels}.png"
    cv2.imwrite(str(path), pixels)  # BGR(A) on disk
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]  # OpenCV: 16 bits >> 8, RGB
    assert np.array_equal(load_image(path), expected)


def test_16_bit_grey_tiff_keeps_its_high_byte(tmp_path):
    pixels = _gradient16()
    Image.fromarray(pixels).save(tmp_path / "grey16.tif")
    assert np.array_equal(load_image(tmp_path / "grey16.tif")[..., 0], pixels >> 8)


def test_a_float_tiff_in_0_1_is_scaled_by_255_instead_of_decoding_black(tmp_path):
    pixels = RNG.random((H, W)).astype(np.float32)
    Image.fromarray(pixels).save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as image:
        assert image.mode == "F"
    got = load_image(tmp_path / "float.tif")
    assert np.array_equal(got[..., 1], np.rint(pixels * 255).astype(np.uint8))
    assert got.max() > 200


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full((H, W), 3.5, np.float32), r"floating-point pixels outside \[0, 1\] \(3.5..3.5\)"),
        (np.full((H, W), -1.0, np.float32), r"outside \[0, 1\] \(-1..-1\)"),
        (np.where(np.eye(H, W) > 0, np.nan, 0.5).astype(np.float32), "NaN or infinity"),
        ((RNG.random((H, W)) * 2**31).astype(np.int32), "32-bit integer pixels"),
    ],
    ids=["above-one", "negative", "nan", "int32"],
)
def test_pixels_that_cannot_be_scaled_to_8_bits_are_refused_in_one_line(tmp_path, values, message):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(IfcnError, match=message) as raised:
        load_image(path)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)


def _mode_files(folder) -> dict[str, object]:
    rgb = Image.fromarray((RNG.random((H, W, 3)) * 255).astype(np.uint8))
    rgba = Image.fromarray((RNG.random((H, W, 4)) * 255).astype(np.uint8), "RGBA")
    files = {
        "rgba.png": rgba,
        "la.png": rgba.convert("LA"),
        "grey.png": rgb.convert("L"),
        "bilevel.png": rgb.convert("1"),
        "palette.png": rgb.convert("P"),
        "palette-transparent.png": rgba.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
    }
    for name, image in files.items():
        image.save(folder / name)
    return files


def test_alpha_palette_grey_and_cmyk_decode_as_pillow_converts_them(tmp_path):
    for name in _mode_files(tmp_path):
        with Image.open(tmp_path / name) as image, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a palette's transparency dropped
            expected = np.asarray(image.convert("RGB"))
        got = load_image(tmp_path / name)
        assert got.shape == (H, W, 3) and got.dtype == np.uint8, name
        assert np.array_equal(got, expected), name


def _without_blocking(fn, *args):
    """fn(*args) in a thread: its result or exception, or a failure if it is still waiting
    after 20 s (a FIFO opened for reading waits for a writer forever)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except Exception as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), f"{fn.__name__} is waiting on a FIFO"
    return outcome


def test_a_fifo_named_like_an_image_is_refused_not_waited_for(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    for fn in (load_image, image_size):
        outcome = _without_blocking(fn, fifo)
        assert isinstance(outcome.get("error"), IfcnError), fn.__name__
        assert str(outcome["error"]) == f"{fifo}: is a FIFO, not an image file"
    mask = tmp_path / "photo_mask.png"
    os.mkfifo(mask)
    Image.new("RGB", (W, H)).save(tmp_path / "real.png")
    outcome = _without_blocking(read_index_png, mask, tmp_path / "real.png", (W, H))
    assert "is a FIFO" in str(outcome.get("error"))
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(IfcnError, match="folder.png: is a folder, not an image file"):
        load_image(tmp_path / "folder.png")


def test_data_check_refuses_what_the_loader_refuses_and_passes_what_it_scales(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_gradient16()).save(images / "grey16.png")
    Image.fromarray((RNG.random((H, W)) * 2**31).astype(np.int32)).save(images / "int32.tif")
    Image.fromarray(np.full((H, W), 7.0, np.float32)).save(images / "float.tif")
    os.mkfifo(images / "fifo.png")
    names = ["grey16.png", "int32.tif", "float.tif", "fifo.png"]
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[4:12, 6:20] = 1
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(mask)
    segmentation = {"size": [H, W], "counts": rle["counts"].decode()}
    dataset = {
        "images": [
            {"id": i, "file_name": name, "height": H, "width": W}
            for i, name in enumerate(names, start=1)
        ],
        "annotations": [
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "segmentation": segmentation,
                "area": 112.0,
                "bbox": [6.0, 4.0, 14.0, 8.0],
                "iscrowd": 0,
            }
            for i in range(1, len(names) + 1)
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(dataset))
    outcome = _without_blocking(check_dataset, path, images)
    problems = outcome["value"].problems
    assert problems == [
        "image 2 ('int32.tif'): unreadable (32-bit integer pixels: save the image with 8 or 16 "
        "bits per channel)",
        "image 3 ('float.tif'): unreadable (floating-point pixels outside [0, 1] (7..7): save "
        "the image with 8 or 16 bits, or scaled to [0, 1])",
        "image 4 ('fifo.png'): unreadable (is a FIFO, not an image file)",
    ]
