"""Training samples from any COCO instances JSON (DESIGN §3, §5).

`CocoInstances` validates the whole JSON and the image folder when it is built, so a bad dataset
fails before training writes anything. A sample is a pure function of (index, seed): the seed
alone draws the shorter side and the flip, which makes resumed and distributed training
reproducible bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO

from ifcn.data.cocojson import check_image_entries
from ifcn.data.image import image_tensor, load_image, resize_image, resize_masks
from ifcn.errors import IfcnError


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """[N, 4] float32 tight xyxy boxes of [N, H, W] masks; x1, y1 exclusive (last index + 1)."""
    if masks.shape[0] == 0:
        return np.zeros((0, 4), np.float32)
    cols, rows = masks.any(1), masks.any(2)
    x0, y0 = cols.argmax(1), rows.argmax(1)
    x1 = masks.shape[2] - cols[:, ::-1].argmax(1)
    y1 = masks.shape[1] - rows[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1, y1], 1).astype(np.float32)


def _segmentation_rle(seg: object, height: int, width: int, where: str, json_path: Path) -> dict:
    """An annotation's segmentation as a (compressed) RLE of the image size; IfcnError if bad."""
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list) or len(size) != 2 or not isinstance(counts, (str, list)):
            raise IfcnError(
                f"{where}: RLE segmentation needs 'size' [h, w] and 'counts'", json_path
            )
        if not counts:
            raise IfcnError(f"{where}: empty segmentation", json_path)
        if [int(s) for s in size] != [height, width]:
            raise IfcnError(
                f"{where}: RLE size {size} differs from its image's {[height, width]}", json_path
            )
        return mask_utils.frPyObjects(seg, height, width) if isinstance(counts, list) else seg
    if isinstance(seg, list):
        try:
            polygons = [[float(v) for v in p] for p in seg]
        except (TypeError, ValueError) as exc:
            raise IfcnError(f"{where}: polygons must be lists of numbers", json_path) from exc
        if any(len(p) % 2 for p in polygons):
            raise IfcnError(f"{where}: a polygon has an odd number of coordinates", json_path)
        polygons = [p for p in polygons if len(p) >= 6]  # fewer than 3 points cover nothing
        if not polygons:
            raise IfcnError(f"{where}: empty segmentation", json_path)
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    raise IfcnError(f"{where}: missing or malformed segmentation", json_path)


def _load_json(json_path: Path) -> dict:
    try:
        with open(json_path) as f:
            data = json.load(f)
    except OSError as exc:
        raise IfcnError(f"cannot read: {exc.strerror}", json_path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IfcnError(f"not valid JSON: {exc}", json_path) from exc
    if not isinstance(data, dict):
        raise IfcnError("not a COCO instances JSON: the top level is not an object", json_path)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise IfcnError(f"not a COCO instances JSON: no '{key}' list", json_path)
    return data


def _check_images(images: list, json_path: Path) -> dict[int, dict]:
    if not images:
        raise IfcnError("the image list is empty", json_path)
    return check_image_entries(images, json_path)


def _normalise_annotations(annotations: list, images: dict[int, dict], json_path: Path) -> None:
    """Check every annotation; accept boolean or missing iscrowd; segmentation as RLE in place."""
    for i, ann in enumerate(annotations):
        where = f"annotation {ann.get('id', f'#{i}') if isinstance(ann, dict) else f'#{i}'}"
        if not isinstance(ann, dict):
            raise IfcnError(f"{where} is not an object", json_path)
        image_id = ann.get("image_id")
        img = images.get(image_id) if type(image_id) is int else None
        if img is None:
            raise IfcnError(f"{where}: unknown image id {ann.get('image_id')!r}", json_path)
        if not isinstance(ann.get("category_id"), int):
            raise IfcnError(f"{where}: no integer category_id", json_path)
        if not ann.get("segmentation"):
            raise IfcnError(f"{where}: no segmentation", json_path)
        ann["segmentation"] = _segmentation_rle(
            ann["segmentation"], int(img["height"]), int(img["width"]), where, json_path
        )
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
        ann.setdefault("id", i + 1)


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
        data = _load_json(self.json_path)
        images = _check_images(data["images"], self.json_path)
        _normalise_annotations(data["annotations"], images, self.json_path)
        if not isinstance(data.get("categories", []), list):
            raise IfcnError("not a COCO instances JSON: 'categories' is not a list", json_path)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self.image_ids: list[int] = sorted(images)
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
