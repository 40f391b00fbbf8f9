"""Training samples from any COCO instances JSON (DESIGN §3, §5).

`CocoInstances` reads the JSON's checked annotations (`ifcn.data.store`): the record that `data
check` or `data convert` made of it, or a full validation of a JSON never checked, so a bad
dataset fails before training writes anything, and a COCO-sized one starts in seconds. Its
arrays are memory-mapped: the DataLoader workers and the ranks of a training share them. Every
image file must exist; `verify_images` reads those not read by the check (or changed since).
A sample is a pure function of (index, seed): the seed alone draws the shorter side and the
flip, which makes resumed and distributed training reproducible bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch

from ifcn.cpus import available_cpus
from ifcn.data.image import image_tensor, load_image, resize_image, resize_masks
from ifcn.data.image_files import image_fault, image_stats
from ifcn.data.masks import mask_boxes
from ifcn.data.store import AnnotationStore, cache_path, checked_annotations, write_store
from ifcn.errors import IfcnError


class CocoInstances(torch.utils.data.Dataset):
    """Images of a COCO instances JSON with all their masks, resized and flipped per (index, seed).

    Crowd annotations are kept, flagged by `iscrowd`, as regions to ignore. `store` is the
    JSON's checked annotations when the caller has them (`checked_annotations`, e.g. from the
    first rank); otherwise they are found or made here, a fresh validation recorded in
    `cache_dir` when given.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        scales: Sequence[int],
        max_size: int | None = None,
        flip: bool = False,
        *,
        store: AnnotationStore | None = None,
        cache_dir: str | Path | None = None,
        reader: str = "ifcn train",
    ):
        if not scales:
            raise IfcnError("no training scales given", json_path)
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.scales = [int(s) for s in scales]
        self.max_size = max_size
        self.flip = flip
        self.reader = reader
        if store is None:
            store = checked_annotations(
                self.json_path, reader=reader, cache_dir=cache_dir,
                workers=min(8, available_cpus()),
            )  # fmt: skip
        self.store = store
        self._len = len(store)
        if not self._len:
            raise IfcnError("the image list is empty", json_path)
        # no list of 118k ids, names or Paths kept or made: they would be Python objects of
        # every rank (and pages its DataLoader workers copy), where the store's arrays are shared
        root = os.fspath(self.image_root)
        self._stats = image_stats(os.path.join(root, name) for name in store.file_names())
        missing = np.flatnonzero(self._stats[:, 0] < 0)
        if len(missing):
            path = self.image_root / store.file_name(int(missing[0]))
            raise IfcnError(f"image file missing (listed in {self.json_path})", path)

    def close(self) -> None:
        """Let go of the annotations' record (its file mapping)."""
        self.store.close()

    @property
    def categories(self) -> list[dict]:
        """The JSON's categories, sorted by id."""
        return self.store.categories

    def image_table(self) -> dict[int, dict]:
        """Image entries by id: file_name, height and width."""
        return self.store.image_table()

    @property
    def image_ids(self) -> list[int]:
        """The image ids, sorted (a list made on each call)."""
        return self.store["image_id"].tolist()

    def index_of(self, image_id: int) -> int:
        return self.store.index(image_id)

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.store.file_name(self.index_of(image_id))

    def _faults(self, indices: Sequence[int]) -> list[tuple[int, str]]:
        """(index, why) of the images among `indices` that are not complete images of their size."""
        names, height, width = self.store.file_names(), self.store["height"], self.store["width"]

        def fault(i: int) -> str | None:
            return image_fault(self.image_root / names[i], int(height[i]), int(width[i]))

        with ThreadPoolExecutor(max_workers=min(8, available_cpus())) as pool:
            found = list(pool.map(fault, indices))
        return [(i, why) for i, why in zip(indices, found, strict=True) if why]

    def verify_images(self) -> None:
        """Read every image file that its record does not show read by a check (or changed
        since: another size or modification time); IfcnError naming the first bad file."""
        recorded = self.store["image_stats"]
        changed = np.flatnonzero((self._stats != recorded).any(1) | (recorded < 0).any(1))
        for index, why in self._faults(changed.tolist())[:1]:
            path = self.image_root / self.store.file_name(index)
            raise IfcnError(f"{why} (listed in {self.json_path})", path)
        if self.store.path is None:  # made now: its record will say the files were read
            self.store.arrays["image_stats"] = self._stats
            self.store.images_verified = True

    def record(self, cache_dir: str | Path) -> Path:
        """The file of the annotations' record: a validation made now is written to
        `cache_dir` (`ifcn.data.store.cache_path`) first."""
        if self.store.path is None:
            target = cache_path(cache_dir, self.json_path, self.store.json_sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store = write_store(self.store, target)
        return self.store.path

    def _check_size(self, image_id: int, path: Path, size: tuple[int, int]) -> None:
        index = self.index_of(image_id)
        expected = (int(self.store["height"][index]), int(self.store["width"][index]))
        if size != expected:
            raise IfcnError(
                f"decoded size {size[0]}x{size[1]} differs from {expected[0]}x{expected[1]} "
                f"in {self.json_path}",
                path,
            )

    def __len__(self) -> int:
        return self._len

    def draw(self, seed: int) -> tuple[int, bool]:
        """The shorter side and flip of a sample: a function of the seed alone."""
        rng = np.random.default_rng(seed)
        scale = self.scales[int(rng.integers(len(self.scales)))]
        flipped = bool(rng.random() < 0.5) and self.flip
        return scale, flipped

    def annotations(self, index: int) -> dict:
        """Image `index`'s annotations in file order: `rles` (pycocotools, bytes counts),
        `iscrowd` (bool) and `category_ids`."""
        rows = self.store.annotation_slice(index)
        return {
            "rles": self.store.rles(index),
            "iscrowd": self.store["iscrowd"][rows].astype(bool),
            "category_ids": self.store["category_id"][rows].astype(np.int64),
        }

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        """Sample `index` drawn with `seed`; a bare index means the first scale and no flip."""
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
            short_side, flipped = self.draw(seed)
        else:
            index, short_side, flipped = int(key), self.scales[0], False
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} images")
        image_id = int(self.store["image_id"][index])
        file_name = self.store.file_name(index)
        path = self.image_root / file_name
        image = load_image(path)
        orig = (image.shape[0], image.shape[1])
        self._check_size(image_id, path, orig)

        anns = self.annotations(index)
        masks = (
            mask_utils.decode(anns["rles"]).transpose(2, 0, 1)
            if anns["rles"]
            else np.zeros((0, *orig), np.uint8)
        )
        image, scale = resize_image(image, short_side, self.max_size)
        size = (image.shape[0], image.shape[1])
        masks = resize_masks(masks, size, scale)
        if flipped:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        keep = masks.any((1, 2))
        masks = np.ascontiguousarray(masks[keep])

        return {
            "image": image_tensor(image)[0],
            "masks": torch.from_numpy(masks),
            "boxes": torch.from_numpy(mask_boxes(masks)),
            "iscrowd": torch.from_numpy(anns["iscrowd"][keep]),
            "category_ids": torch.from_numpy(anns["category_ids"][keep]),
            "image_id": int(image_id),
            "scale": float(scale),
            "orig_size": orig,
            "size": size,
            "flipped": flipped,
            "file_name": file_name,
        }


def collate_single(batch: list[dict]) -> dict:
    """DataLoader collate for one image per process per step: the sample itself."""
    if len(batch) != 1:
        raise ValueError(f"collate_single expects a batch of one sample, got {len(batch)}")
    return batch[0]
