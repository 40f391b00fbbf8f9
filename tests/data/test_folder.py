"""A plain folder of photos as an image table (issue 23 items 12 and 16): photos under a linked
folder are found, a link to an ancestor ends, a FIFO named like a photo is refused at once."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image

from ifcn.data.folder import image_files, image_table_from_folder
from ifcn.errors import IfcnError


def _photo(path, height=20, width=30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


def test_photos_under_a_linked_folder_are_listed(tmp_path):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    _photo(photos / "a.png")
    _photo(elsewhere / "trip" / "b.jpg", 24, 16)
    (photos / "holiday").symlink_to(elsewhere)
    table = image_table_from_folder(photos)
    assert [entry["file_name"] for entry in table.values()] == ["a.png", "holiday/trip/b.jpg"]
    assert table[2]["height"] == 24 and table[2]["width"] == 16


def test_a_link_to_an_ancestor_or_a_second_link_to_a_folder_is_followed_once(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.png")
    _photo(photos / "sub" / "b.png")
    (photos / "sub" / "up").symlink_to(photos)  # a loop: photos/sub/up/sub/up/...
    (photos / "again").symlink_to(photos / "sub")  # the same folder under a second name
    found = [path.as_posix() for path in image_files(photos)]
    assert found in (["a.png", "again/b.png"], ["a.png", "sub/b.png"])


def test_a_fifo_named_like_a_photo_is_refused_at_once(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.png")
    os.mkfifo(photos / "b.png")
    outcome: dict = {}

    def run():
        try:
            image_table_from_folder(photos)
        except IfcnError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the listing waits for a writer of the FIFO"
    assert outcome["error"] == f"{photos / 'b.png'}: is a FIFO, not an image file"


def test_a_broken_link_named_like_a_photo_is_one_line(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.png")
    (photos / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(IfcnError, match="gone.png: image file not found"):
        image_table_from_folder(photos)
