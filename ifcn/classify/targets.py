"""Which segments the classifier learns from, and with which labels (DESIGN §9).

Training RoIs are an image's best `top_n` proposals plus its ground-truth masks (Fast R-CNN's
habit: the GTs are perfect positives). A RoI whose best mask IoU with a non-crowd GT is at
least `fg_iou` takes that GT's class; one in [`bg_iou_low`, `fg_iou`) is background; the rest
are not used, nor is a background RoI lying mostly (≥ 50 % of its area) inside a crowd region.
Each step samples `rois_per_image` of them, at most `fg_fraction` foreground. A sample is a pure
function of (image index, step seed), so resumed runs see the very same RoIs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ifcn.classify.model import roi_inputs
from ifcn.classify.settings import mask_grid_size
from ifcn.data.dataset import CocoInstances
from ifcn.errors import IfcnError
from ifcn.proposals.format import ProposalsPerProcess

IGNORE = -1  # label of RoIs that are neither foreground nor background
_CROWD_IOA = 0.5  # share of a RoI inside a crowd region that keeps it from being background


def rle_boxes(rles: Sequence[dict]) -> np.ndarray:
    """Tight boxes [n, 4] (x0, y0, x1, y1; x1, y1 exclusive) of RLE masks, as proposals store."""
    if not rles:
        return np.zeros((0, 4), np.float32)
    xywh = np.asarray(mask_utils.toBbox(list(rles)), np.float32).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)


def label_rois(
    rles: Sequence[dict],
    gt_rles: Sequence[dict],
    gt_labels: np.ndarray,
    crowd_rles: Sequence[dict] = (),
    fg_iou: float = 0.5,
    bg_iou_low: float = 0.1,
) -> np.ndarray:
    """Labels [n] int64: the best-matching GT's class (1..C), 0 background, IGNORE otherwise."""
    n = len(rles)
    labels = np.full(n, IGNORE, np.int64)
    if not n:
        return labels
    if len(gt_rles):
        ious = np.asarray(mask_utils.iou(list(rles), list(gt_rles), [0] * len(gt_rles)))
        ious = ious.reshape(n, len(gt_rles))
        best, match = ious.max(1), ious.argmax(1)
    else:
        best, match = np.zeros(n), np.zeros(n, np.int64)
    foreground = best >= fg_iou
    labels[foreground] = np.asarray(gt_labels, np.int64)[match[foreground]]
    background = ~foreground & (best >= bg_iou_low)
    if len(crowd_rles):
        inside = np.asarray(mask_utils.iou(list(rles), list(crowd_rles), [1] * len(crowd_rles)))
        background &= inside.reshape(n, -1).max(1) < _CROWD_IOA
    labels[background] = 0
    return labels


def sample_rois(
    labels: np.ndarray, rois_per_image: int, fg_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Indices of up to `rois_per_image` RoIs, at most `fg_fraction` of them foreground."""
    fg = np.flatnonzero(labels > 0)
    bg = np.flatnonzero(labels == 0)
    num_fg = min(int(round(rois_per_image * fg_fraction)), len(fg))
    num_bg = min(rois_per_image - num_fg, len(bg))
    chosen = [rng.choice(fg, num_fg, replace=False), rng.choice(bg, num_bg, replace=False)]
    return np.concatenate(chosen).astype(np.int64)


def category_table(dataset: CocoInstances) -> list[dict]:
    """The GT's categories sorted by id (class c is entry c-1); every annotation must use one."""
    categories = dataset.categories
    try:
        table = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
    except (KeyError, TypeError, ValueError):
        raise IfcnError("a category lacks an integer id or a name", dataset.json_path) from None
    table.sort(key=lambda c: c["id"])
    if len({c["id"] for c in table}) != len(table):
        raise IfcnError("a category id appears twice", dataset.json_path)
    if not table:
        raise IfcnError("no categories: the classifier needs labelled instances", dataset.json_path)
    used = dataset.store["category_id"]
    unknown = np.flatnonzero(~np.isin(used, [c["id"] for c in table]))
    if len(unknown):
        k = int(unknown[0])
        raise IfcnError(
            f"annotation {int(dataset.store['ann_id'][k])} has category_id {int(used[k])}, "
            "which the categories list lacks",
            dataset.json_path,
        )
    return table


class RoiSamples(Dataset):
    """Training samples: the image (scale and flip drawn from the step seed) and its RoIs.

    A sample holds `image` [3, H, W], `rois` [n, 5], `grids` [n, P, P] and `labels` [n]. The
    proposal file is opened once per process (h5py handles do not survive a fork).
    """

    def __init__(
        self,
        images: CocoInstances,
        proposals_path: str | Path,
        categories: Sequence[dict],
        cfg: Mapping,
    ) -> None:
        self.images = images
        self.proposals_path = Path(proposals_path)
        self.class_of = {c["id"]: k + 1 for k, c in enumerate(categories)}
        self.cfg = dict(cfg)
        self._file = ProposalsPerProcess(proposals_path)

    def __len__(self) -> int:
        return len(self.images)

    def close(self) -> None:
        """Close this process's handle of the proposal file."""
        self._file.close()

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = int(key[0]), int(key[1])
        sample = self.images[(index, seed)]
        image_id = sample["image_id"]
        found = self._file.get(image_id, top_n=self.cfg["top_n"])
        anns = self.images.annotations(index)
        crowd = anns["iscrowd"]
        gt_rles = [r for r, c in zip(anns["rles"], crowd.tolist(), strict=True) if not c]
        crowd_rles = [r for r, c in zip(anns["rles"], crowd.tolist(), strict=True) if c]
        gt_labels = np.array([self.class_of[c] for c in anns["category_ids"][~crowd].tolist()])
        gt_labels = gt_labels.astype(np.int64)
        rles = found.coco_rles() + gt_rles
        boxes = np.concatenate([found.boxes.reshape(-1, 4), rle_boxes(gt_rles)])
        labels = label_rois(
            rles, gt_rles, gt_labels, crowd_rles, self.cfg["fg_iou"], self.cfg["bg_iou_low"]
        )
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        keep = sample_rois(labels, self.cfg["rois_per_image"], self.cfg["fg_fraction"], rng)
        rois, grids = roi_inputs(
            [rles[i] for i in keep],
            boxes[keep],
            sample["scale"],
            sample["size"][1],
            sample["flipped"],
            mask_grid_size(self.cfg["pool_size"]),
        )
        return {
            "image": sample["image"],
            "rois": rois,
            "grids": grids,
            "labels": torch.from_numpy(labels[keep]),
            "image_id": image_id,
        }
