"""Images as the network sees them: decoded, resized, normalised (shared by training and inference).

Training samples, inference and the pictures all go through these functions, so an image is
resized and normalised the same way wherever it enters the network; `data check` decodes with
the same `load_image`, so it refuses what the stages would refuse. torch is imported only where
a tensor is made: `data check` and `data convert` run without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from ifcn.errors import IfcnError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

# OpenCV's own thread pool deadlocks in DataLoader workers forked after it ran in the parent;
# the workers (and the processes of DDP) already give parallelism (detectron2 does the same).
cv2.setNumThreads(0)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CV2_MAX_CHANNELS = 4  # cv2.resize with INTER_LINEAR refuses more channels than this


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Pillow's (lazy) `Image.open` of a regular file. Anything else named like an image is an
    IfcnError naming it: a FIFO (reading it would wait forever for a writer), a device, a
    folder. The file is opened without waiting (O_NONBLOCK) and checked on that descriptor,
    so nothing can swap it between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise IfcnError("image file not found", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot open the image ({exc.strerror})", path) from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        what = "a FIFO" if stat.S_ISFIFO(kind) else "a folder" if stat.S_ISDIR(kind) else (
            "a device or socket"
        )  # fmt: skip
        raise IfcnError(f"is {what}, not an image file", path)
    with os.fdopen(fd, "rb") as file:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(file)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise IfcnError(f"cannot decode image: {exc}", path) from None
        with image:
            yield image


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file as (H, W, 3) RGB uint8; EXIF orientation is ignored, as COCO does.

    8-bit images of any mode (grey, palette, alpha, CMYK) are converted as Pillow converts them
    (alpha dropped). 16 bits per channel keep their high byte (x >> 8, as OpenCV's imread and
    torchvision's convert_image_dtype scale them): Pillow does so for colour, and would clip
    grey to 255. Floating-point grey must lie in [0, 1] and is scaled by 255 (Pillow would
    clip it to 0). Anything else (32-bit integers, floats outside [0, 1]) is an IfcnError.
    """
    with open_image(path) as image:
        try:
            return rgb8(image, path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise IfcnError(f"cannot decode image: {exc}", path) from None


def rgb8(image: Image.Image, path: str | Path) -> np.ndarray:
    """An opened image's pixels as (H, W, 3) RGB uint8, scaled as `load_image` says."""
    if image.mode.startswith("I;16"):
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values.size and not (
            np.isfinite(values).all() and 0 <= values.min() <= values.max() <= 1
        ):
            finite = values[np.isfinite(values)]
            span = f"{finite.min():g}..{finite.max():g}" if finite.size else "no finite value"
            raise IfcnError(
                f"floating-point pixels outside [0, 1] ({span}"
                f"{', and NaN or infinity' if finite.size < values.size else ''}): "
                "save the image with 8 or 16 bits, or scaled to [0, 1]",
                path,
            )
        grey = np.rint(values * 255).astype(np.uint8)
    elif image.mode in ("I", "I;32", "I;32S"):
        raise IfcnError("32-bit integer pixels: save the image with 8 or 16 bits per channel", path)
    else:
        with warnings.catch_warnings():  # a palette's transparency is dropped, as alpha is
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(image.convert("RGB"))
    return np.repeat(grey[..., None], 3, axis=2)


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
    import torch

    pixels = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return tensor[None].to(device)
