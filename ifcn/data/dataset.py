"""Training samples from any COCO instances JSON (DESIGN §3, §5).

`CocoInstances` validates the whole JSON and the image folder when it is built, so a bad dataset
fails before training writes anything. A sample is a pure function of (index, seed): the seed
alone draws the shorter side and the flip, which makes resumed and distributed training
reproducible bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch

from ifcn.data.image import image_tensor, load_image, resize_image, resize_masks
from ifcn.data.instances import read_instances
from ifcn.data.masks import mask_boxes
from ifcn.errors import IfcnError


def _decoded_size(path: Path) -> tuple[int, int]:
    image = load_image(path)
    return image.shape[0], image.shape[1]


class CocoInstances(torch.utils.data.Dataset):
    """Images of a COCO instances JSON with all their masks, resized and flipped per (index, seed).

    Crowd annotations are kept, flagged by `iscrowd`, as regions to ignore.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        scales: Sequence[int],
        max_size: int | None = None,
        flip: bool = False,
    ):
        if not scales:
            raise IfcnError("no training scales given", json_path)
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.scales = [int(s) for s in scales]
        self.max_size = max_size
        self.flip = flip
        instances = read_instances(self.json_path)
        if not instances.images:
            raise IfcnError("the image list is empty", json_path)
        self.coco = instances.coco()
        self.image_ids: list[int] = sorted(instances.images)
        for image_id in self.image_ids:
            path = self.image_path(image_id)
            if not path.is_file():
                raise IfcnError(f"image file missing (listed in {self.json_path})", path)

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.coco.imgs[image_id]["file_name"]

    def verify_images(self) -> None:
        """Decode every image and check its size against the JSON; IfcnError naming the file."""
        paths = [self.image_path(i) for i in self.image_ids]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for image_id, path, size in zip(
                self.image_ids, paths, pool.map(_decoded_size, paths), strict=True
            ):
                self._check_size(image_id, path, size)

    def _check_size(self, image_id: int, path: Path, size: tuple[int, int]) -> None:
        img = self.coco.imgs[image_id]
        if size != (int(img["height"]), int(img["width"])):
            raise IfcnError(
                f"decoded size {size[0]}x{size[1]} differs from {img['height']}x{img['width']} "
                f"in {self.json_path}",
                path,
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def draw(self, seed: int) -> tuple[int, bool]:
        """The shorter side and flip of a sample: a function of the seed alone."""
        rng = np.random.default_rng(seed)
        scale = self.scales[int(rng.integers(len(self.scales)))]
        flipped = bool(rng.random() < 0.5) and self.flip
        return scale, flipped

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        """Sample `index` drawn with `seed`; a bare index means the first scale and no flip."""
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
            short_side, flipped = self.draw(seed)
        else:
            index, short_side, flipped = int(key), self.scales[0], False
        if not 0 <= index < len(self.image_ids):
            raise IndexError(f"index {index} out of range for {len(self.image_ids)} images")
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path(image_id)
        image = load_image(path)
        orig = (image.shape[0], image.shape[1])
        self._check_size(image_id, path, orig)

        anns = self.coco.imgToAnns.get(image_id, [])
        masks = (
            mask_utils.decode([a["segmentation"] for a in anns]).transpose(2, 0, 1)
            if anns
            else np.zeros((0, *orig), np.uint8)
        )
        image, scale = resize_image(image, short_side, self.max_size)
        size = (image.shape[0], image.shape[1])
        masks = resize_masks(masks, size, scale)
        if flipped:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        keep = masks.any((1, 2))
        masks = np.ascontiguousarray(masks[keep])
        anns = [a for a, k in zip(anns, keep, strict=True) if k]

        return {
            "image": image_tensor(image)[0],
            "masks": torch.from_numpy(masks),
            "boxes": torch.from_numpy(mask_boxes(masks)),
            "iscrowd": torch.tensor([bool(a["iscrowd"]) for a in anns], dtype=torch.bool),
            "category_ids": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "image_id": int(image_id),
            "scale": float(scale),
            "orig_size": orig,
            "size": size,
            "flipped": flipped,
            "file_name": str(info["file_name"]),
        }


def collate_single(batch: list[dict]) -> dict:
    """DataLoader collate for one image per process per step: the sample itself."""
    if len(batch) != 1:
        raise ValueError(f"collate_single expects a batch of one sample, got {len(batch)}")
    return batch[0]
