"""Training on crops around sampled windows, DeepMask's way (paper Table 2, "crop 224×224").

The paper trains both heads either on full images (fully convolutional training) or, as
DeepMask does, on 224×224 crops at the training scale. `CropInstances` wraps `CocoInstances`:
it takes the resized, flipped sample of (index, seed) and cuts a crop×crop region around one
window, drawn half the time among the positive windows (so objects of the window's size are
seen centred, as DeepMask's positives are) and otherwise uniformly over the image. The
criterion then labels the crop's own windows exactly as it labels a full image.

A crop lies inside the image wherever the image is large enough; where it is smaller, the rest
is zeros of the normalised image, i.e. the ImageNet mean colour. Instances keep their whole box,
shifted (not clipped), so an object cut by the crop's edge is labelled by its true centre and
size as on the full image; its pixels beyond the edge fall outside the crop and are ignored by
the mask loss like any pixel outside an image. Instances with no pixel in the crop are dropped.
Like the sample itself, the crop is a pure function of the step seed.

`build_train_dataset` makes the training set of a config, either way, and refuses one in
which no instance can ever make a positive window (`check_learnable`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ifcn.data.dataset import CocoInstances
from ifcn.data.store import AnnotationStore
from ifcn.errors import IfcnError
from ifcn.windows import (
    POSITIVE,
    LabelRule,
    cell_grid,
    label_windows,
    top_left_of_cell,
    window_centres,
)

# The crop's draw is its own random stream of the step seed, apart from the scale and flip.
CROP_STREAM = 1


def crop_origin(centre: float, length: int, crop: int) -> int:
    """First pixel of a crop of side ``crop`` centred near ``centre`` along an axis of ``length``.

    Clamped so the crop stays inside the image when it fits and covers the image when not.
    """
    low, high = min(0, length - crop), max(0, length - crop)
    return int(np.clip(math.floor(centre - crop / 2 + 0.5), low, high))


def positive_window_centres(
    boxes: torch.Tensor, iscrowd: torch.Tensor, size: tuple[int, int], rule: LabelRule
) -> torch.Tensor:
    """Centres (x, y) in pixels of the positive windows of an image of ``size`` (H, W): [P, 2]."""
    cells = cell_grid(math.ceil(size[0] / rule.stride), math.ceil(size[1] / rule.stride))
    tops = top_left_of_cell(cells, rule.m)
    labels, _ = label_windows(tops, boxes, iscrowd, rule)
    return window_centres(tops[labels == POSITIVE], rule.m, rule.stride)


def cut(sample: dict, crop: int, y0: int, x0: int) -> dict:
    """``sample`` restricted to pixels [y0, y0+crop) × [x0, x0+crop), zeros beyond the image."""
    height, width = sample["size"]
    ys = slice(max(y0, 0), min(y0 + crop, height))
    xs = slice(max(x0, 0), min(x0 + crop, width))
    to_y = slice(ys.start - y0, ys.stop - y0)
    to_x = slice(xs.start - x0, xs.stop - x0)
    image = sample["image"].new_zeros((sample["image"].shape[0], crop, crop))
    image[:, to_y, to_x] = sample["image"][:, ys, xs]
    masks = sample["masks"].new_zeros((sample["masks"].shape[0], crop, crop))
    masks[:, to_y, to_x] = sample["masks"][:, ys, xs]
    keep = (masks.flatten(1) != 0).any(dim=1)
    shift = torch.tensor([x0, y0, x0, y0], dtype=sample["boxes"].dtype)
    return {
        **sample,
        "image": image,
        "masks": masks[keep].contiguous(),
        "boxes": (sample["boxes"] - shift)[keep],
        "iscrowd": sample["iscrowd"][keep],
        "category_ids": sample["category_ids"][keep],
        "size": (crop, crop),
        "crop_origin": (y0, x0),
    }


class CropInstances(Dataset):
    """`CocoInstances` samples cut to crop×crop around a sampled window (keys: (index, seed))."""

    def __init__(
        self,
        dataset: CocoInstances,
        crop: int,
        rule: LabelRule,
        positive_probability: float = 0.5,
    ):
        self.dataset = dataset
        self.crop = int(crop)
        self.rule = rule
        self.positive_probability = positive_probability

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def store(self) -> AnnotationStore:
        return self.dataset.store

    def verify_images(self) -> None:
        """Check the image files (see `CocoInstances.verify_images`)."""
        self.dataset.verify_images()

    def record(self, cache_dir: str | Path) -> Path:
        """See `CocoInstances.record`."""
        return self.dataset.record(cache_dir)

    def close(self) -> None:
        self.dataset.close()

    def draw_centre(self, sample: dict, rng: np.random.Generator) -> tuple[float, float]:
        """(y, x) the crop is centred on: a positive window's centre, or a uniform point."""
        height, width = sample["size"]
        if rng.random() < self.positive_probability:
            centres = positive_window_centres(
                sample["boxes"], sample["iscrowd"], (height, width), self.rule
            )
            if len(centres):
                x, y = centres[int(rng.integers(len(centres)))].tolist()
                return y, x
        return float(rng.uniform(0, height)), float(rng.uniform(0, width))

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        """The crop of sample ``key`` ((index, seed), or a bare index as `CocoInstances` takes)."""
        sample = self.dataset[key]
        seed = int(key[1]) if isinstance(key, (tuple, list)) else 0
        rng = np.random.default_rng([seed, CROP_STREAM])
        cy, cx = self.draw_centre(sample, rng)
        height, width = sample["size"]
        y0 = crop_origin(cy, height, self.crop)
        x0 = crop_origin(cx, width, self.crop)
        return cut(sample, self.crop, y0, x0)


def check_learnable(dataset: CocoInstances, rule: LabelRule, max_size: int | None) -> None:
    """Refuse a training set in which no instance can ever label a window positive.

    Such a set trains every step on 0 positives — the mask term of the loss never runs and the
    objectness learns "nothing is an object" — without any error: a JSON with no instance
    annotations (an export of unlabelled images), only crowd regions, or instances that are
    never of a positive window's size at any training scale (`train.scales` or
    `train.canonical` wrong for the data). The sizes are the masks' boxes scaled as the
    images will be, with a pixel of slack for rounding.
    """
    store = dataset.store
    instance = store["iscrowd"] == 0
    where = dataset.json_path
    if not instance.any():
        raise IfcnError(
            f"no image has an instance annotation (crowd regions aside) among the "
            f"{len(dataset)} training images: every step would see 0 positive windows",
            where,
        )
    # one scale at a time: a few arrays of one value per instance (COCO: 860k), not [n, scales]
    sides = store["mask_box"][:, 2:].max(1)[instance]
    image_of = np.repeat(np.arange(len(store)), np.diff(store["ann_offset"]))[instance]
    heights, widths = store["height"], store["width"]
    shorter = np.minimum(heights, widths).astype(np.float64)[image_of]
    limit = None if max_size is None else (max_size / np.maximum(heights, widths))[image_of]
    del image_of
    low = rule.canonical_size * 2.0**-rule.pos_scale_range
    high = min(rule.canonical_size * 2.0**rule.pos_scale_range, rule.window_side)
    smallest, largest, learnable = np.inf, -np.inf, False
    for scale in np.array(dataset.scales, dtype=np.float64).tolist():
        factors = scale / shorter
        if limit is not None:
            np.minimum(factors, limit, out=factors)
        sizes = np.multiply(sides, factors, out=factors)
        smallest, largest = min(smallest, sizes.min()), max(largest, sizes.max())
        learnable = learnable or bool(((sizes >= low - 1) & (sizes <= high + 1)).any())
    if not learnable:
        raise IfcnError(
            f"none of the {len(sides)} instances can make a positive window: at the training "
            f"scales {dataset.scales} their larger sides measure {smallest:.0f}-"
            f"{largest:.0f} px, a positive needs {low:.0f}-{high:.0f} px (train.canonical "
            f"{rule.canonical_size:.0f} px x 2^+-{rule.pos_scale_range}); every step would see "
            "0 positive windows: change train.scales or train.canonical",
            where,
        )


def build_train_dataset(
    config: dict, *, store: AnnotationStore | None = None, cache_dir: str | Path | None = None
) -> CocoInstances | CropInstances:
    """The training set of a config: full images, or crops when ``train.crop`` is set; its
    annotations `store` when given, else found or made (see `CocoInstances`).

    IfcnError when no instance of it can ever be a positive (`check_learnable`).
    """
    train = config["train"]
    dataset = CocoInstances(
        config["data"]["train_json"],
        config["data"]["train_images"],
        scales=train["scales"],
        max_size=train["max_size"],
        flip=train["flip"],
        store=store,
        cache_dir=cache_dir,
    )
    rule = LabelRule.from_config(config)
    check_learnable(dataset, rule, train["max_size"])
    if train.get("crop") is None:
        return dataset
    return CropInstances(dataset, train["crop"], rule)
