"""Shared train/evaluation images (issue 14): the same id and name, or the same file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ifcn.data.overlap import shared_images
from ifcn.data.store import ImageSet


def _reference(first: ImageSet, first_root: Path, second: ImageSet, second_root: Path):
    """The definition, read the other way: every image of `second` against all of `first`."""
    names = {(i, image["file_name"]) for i, image in first.images.items()}
    files = {os.path.realpath(first_root / im["file_name"]) for im in first.images.values()}
    return sorted(
        i
        for i, image in second.images.items()
        if (i, image["file_name"]) in names
        or os.path.realpath(second_root / image["file_name"]) in files
    )


def test_shared_images_are_found_by_id_and_name_or_by_file(tmp_path):
    rng = np.random.default_rng(5)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    for k in range(12):
        (tmp_path / "train" / f"{k}.jpg").write_bytes(b"x")
        (tmp_path / "val" / f"{k}.jpg").write_bytes(b"y")
    (tmp_path / "val" / "link.jpg").symlink_to(tmp_path / "train" / "3.jpg")  # a train file
    names = [f"{k}.jpg" for k in range(12)]
    first = ImageSet(tmp_path / "t.json", {int(i): {"file_name": names[i]} for i in range(12)}, {})
    second_images = {int(i): {"file_name": str(rng.choice(names))} for i in range(20, 26)}
    second_images |= {2: {"file_name": "2.jpg"}, 5: {"file_name": "9.jpg"},  # id and name; id
                      30: {"file_name": "link.jpg"}, 31: {"file_name": "../train/7.jpg"},
                      32: {"file_name": "../train/7.jpg"}}  # fmt: skip
    second = ImageSet(tmp_path / "v.json", second_images, {})
    train, val = tmp_path / "train", tmp_path / "val"
    got = shared_images(first, train, second, val)
    assert got == _reference(first, train, second, val) == [2, 30, 31, 32]
    # without image roots, only the same id and name
    assert shared_images(first, None, second, val) == [2]
    assert shared_images(second, val, second, val) == sorted(second_images)  # itself: all
