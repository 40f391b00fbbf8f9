"""Training samples from any COCO instances JSON (DESIGN §3, §5).

`CocoInstances` validates the whole JSON and the image folder when it is built, so a bad dataset
fails before training writes anything. A sample is a pure function of (index, seed): the seed
alone draws the shorter side and the flip, which makes resumed and distributed training
reproducible bit for bit. `load_image` and `resize_image` are shared with inference so both
resize the same way.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image
from pycocotools.coco import COCO

from ifcn.errors import IfcnError

# OpenCV's own thread pool deadlocks in DataLoader workers forked after it ran in the parent;
# the workers (and the processes of DDP) already give parallelism (detectron2 does the same).
cv2.setNumThreads(0)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CV2_MAX_CHANNELS = 4  # cv2.resize with INTER_LINEAR refuses more channels than this


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file as (H, W, 3) RGB uint8; EXIF orientation is ignored, as COCO does."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
    except FileNotFoundError as exc:
        raise IfcnError("image file not found", path) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise IfcnError(f"cannot decode image: {exc}", path) from exc


def resized_shape(
    height: int, width: int, short_side: int, max_size: int | None = None
) -> tuple[int, int, float]:
    """(H, W, scale): shorter side to `short_side`, longer side capped at `max_size`.

    One scale factor for both axes (ResizeShortestEdge of detectron2); sizes round half up.
    """
    scale = short_side / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    new_h = max(1, int(math.floor(height * scale + 0.5)))
    new_w = max(1, int(math.floor(width * scale + 0.5)))
    return new_h, new_w, scale


def _resize(array: np.ndarray, size: tuple[int, int], scale: float) -> np.ndarray:
    """cv2.resize to (H, W): area averaging when shrinking (no aliasing), bilinear when growing."""
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


def resize_image(
    image: np.ndarray, short_side: int, max_size: int | None = None
) -> tuple[np.ndarray, float]:
    """The image resized as `resized_shape` says, and the scale factor (resized / original)."""
    new_h, new_w, scale = resized_shape(image.shape[0], image.shape[1], short_side, max_size)
    return _resize(image, (new_h, new_w), scale), scale


def resize_masks(masks: np.ndarray, size: tuple[int, int], scale: float) -> np.ndarray:
    """[N, h, w] 0/1 masks to [N, H, W] 0/1, interpolated like the image, thresholded at 0.5."""
    out = np.empty((masks.shape[0], *size), np.uint8)
    for start in range(0, masks.shape[0], _CV2_MAX_CHANNELS):
        chunk = np.ascontiguousarray(masks[start : start + _CV2_MAX_CHANNELS].transpose(1, 2, 0))
        resized = _resize(chunk * np.uint8(255), size, scale).reshape(*size, -1)
        out[start : start + chunk.shape[2]] = (resized > 127).transpose(2, 0, 1)
    return out


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
    by_id: dict[int, dict] = {}
    for i, img in enumerate(images):
        try:
            image_id, height, width = img["id"], int(img["height"]), int(img["width"])
            if type(image_id) is not int or not isinstance(img["file_name"], str):
                raise ValueError
            if height < 1 or width < 1:
                raise ValueError
        except (TypeError, KeyError, ValueError) as exc:
            raise IfcnError(
                f"images[{i}] needs an integer id, a file_name and a positive height and width",
                json_path,
            ) from exc
        if image_id in by_id:
            raise IfcnError(f"image id {image_id} appears twice", json_path)
        by_id[image_id] = img
    return by_id


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

        pixels = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
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
