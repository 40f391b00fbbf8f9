"""Candidates made by hand: any masks on any window boxes, random score maps, and an oracle
network whose score maps spell out known instances."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ifcn.assemble import assembling_index
from ifcn.windows import STRIDE


@dataclass
class HandCandidates:
    """The fields `nms_image` reads, given directly (candidates.h5 computes masks and boxes)."""

    image_id: int
    file_name: str
    height: int
    width: int
    masks: np.ndarray  # (n, S, S) probabilities
    boxes: np.ndarray  # (n, 4) window boxes in image pixels
    objectness: np.ndarray  # (n,) logits
    scale: np.ndarray  # (n,) scale indices

    def __len__(self) -> int:
        return len(self.objectness)


SCALES = (30, 54)  # shorter sides: resize factors 0.5 and 0.9 of the default 60x70 image


def score_map_candidates(
    image_id: int,
    count: int,
    seed: int = 0,
    height: int = 60,
    width: int = 70,
    k: int = 3,
    m: int = 5,
    scales: tuple[int, ...] = SCALES,
):
    """An ImageCandidates of random score maps at every scale (shorter side; feature map of
    the resized image at stride 8) and `count` windows spread over the scales, best first per
    scale."""
    from ifcn.proposals.candidates import ImageCandidates, resize_factors

    resize = resize_factors(height, width, scales, 0)
    rng = np.random.default_rng(seed * 1000 + image_id)
    sizes = np.array([[-(-round(height * f) // 8), -(-round(width * f) // 8)] for f in resize])
    maps = [(rng.normal(size=(k * k, *size)) * 3).astype(np.float16) for size in sizes]
    scale = np.sort(rng.integers(0, len(resize), count)).astype(np.int8)
    tops, objectness = [], []
    for index, (h, w) in enumerate(sizes):
        n = int((scale == index).sum())
        cells = rng.choice(h * w, size=n, replace=n > h * w)
        tops.append(np.stack([cells // w, cells % w], 1) - m // 2)
        objectness.append(np.sort(rng.normal(size=n).astype(np.float32))[::-1])
    return ImageCandidates(
        image_id=image_id,
        file_name=f"img {image_id}.jpg",
        height=height,
        width=width,
        tops=np.concatenate(tops).astype(np.int64),
        objectness=np.concatenate(objectness),
        scale=scale,
        resize=np.array(resize, dtype=np.float64),
        map_sizes=sizes,
        m=m,
        maps=maps,
    )


def candidate_attrs(shard: str = "0/1", **changes) -> dict:
    """Attributes of a small candidates file (k = 3, m = 5, two scales)."""
    return {"config": '{"model": {"k": 3}}', "checkpoint_sha256": "ab" * 32, "dataset": "val.json",
            "scales": list(SCALES), "max_size": 0, "k": 3, "m": 5, "head": "instancefcn",
            "pre_nms_topk": 10, "shard": shard, **changes}  # fmt: skip


class OracleFCN(nn.Module):
    """Stands in for the network: score maps and objectness written from known instances.

    At any input size it infers the scale from the image height, marks each feature cell with
    the instance under its centre, and for that cell raises the score map of its relative
    position (i, j) in the window centred on the instance's centre cell; objectness is high at
    the instances' centre cells and falls off with the distance to them.
    """

    stride = STRIDE

    def __init__(self, masks: np.ndarray, k: int = 5, m: int = 21):
        super().__init__()
        self.masks = masks.astype(bool)  # [N, H, W] in original-image pixels
        self.k, self.m = k, m

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        _, _, height, width = images.shape
        scale = height / self.masks.shape[1]
        h, w = math.ceil(height / STRIDE), math.ceil(width / STRIDE)
        k, m = self.k, self.m
        scores = torch.full((k * k, h, w), -10.0)
        objectness = torch.full((h, w), -10.0)
        index = assembling_index(k, m)
        rows, cols = self.masks.shape[1:]
        ys = np.minimum(((np.arange(h) + 0.5) * STRIDE / scale).astype(int), rows - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * STRIDE / scale).astype(int), cols - 1)
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        for mask in self.masks:
            rows, cols = np.nonzero(mask)
            cy = int((rows.min() + rows.max() + 1) / 2 * scale // STRIDE)
            cx = int((cols.min() + cols.max() + 1) / 2 * scale // STRIDE)
            y0, x0 = cy - m // 2, cx - m // 2
            inside = mask[np.ix_(ys, xs)]  # the instance under each cell's centre
            for y, x in zip(*np.nonzero(inside), strict=True):
                u, v = y - y0, x - x0
                if 0 <= u < m and 0 <= v < m:
                    scores[:, y, x] = -10.0
                    scores[index[u, v], y, x] = 10.0
            distance = torch.from_numpy(np.hypot(yy - cy, xx - cx)).float()
            objectness = torch.maximum(objectness, 10.0 - 4.0 * distance)
        return {
            "features": torch.zeros(1, 1, h, w),
            "scores": scores[None],
            "objectness": objectness[None, None],
        }
