"""Images as the network sees them: decoded, resized, normalised (shared by training and inference).

Training samples, inference and the pictures all go through these functions, so an image is
resized and normalised the same way wherever it enters the network.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

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


def image_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """RGB uint8 (H, W, 3) → [1, 3, H, W] float32, normalised with the ImageNet statistics."""
    pixels = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return tensor[None].to(device)
