"""Window geometry and window labelling: the single source of truth for both (DESIGN §4, §5).

A window is m×m feature cells at stride ``STRIDE``; it is named by its top-left cell (y0, x0).
Feature cell (y, x) covers resized-image pixels [x·s, (x+1)·s) × [y·s, (y+1)·s), so the window
covers [x0·s, (x0+m)·s) × [y0·s, (y0+m)·s) and its centre is ((x0 + m/2)·s, (y0 + m/2)·s).
The objectness logit at cell (y, x) scores the window centred on that cell, whose top-left is
(y − m//2, x − m//2). Training labels, inference boxes and pictures all use these functions.

Labels follow DeepMask's definition of positives and negatives (paper §3.3, DESIGN §5):
- positive: a non-crowd instance whose box centre lies within ``pos_shift`` px of the window
  centre (per axis), whose larger box side lies within canonical·2^{±pos_scale_range}, and which
  the window contains;
- negative: no instance (crowd included) with centre within ``neg_shift`` px and larger side
  strictly within canonical·2^{±neg_scale_range}, and the centre not inside a crowd region;
- everything else is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

STRIDE = 8
POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


def top_left_of_cell(cells: Tensor, m: int) -> Tensor:
    """Top-left cells (y0, x0) of the windows centred on ``cells`` [..., 2] as (y, x)."""
    return cells - m // 2


def rank_windows(objectness: Tensor, m: int, topk: int) -> tuple[Tensor, Tensor]:
    """Top-left cells [n, 2] and logits [n] of the ``topk`` best windows of an [h, w] map."""
    width = objectness.shape[-1]
    flat = objectness.reshape(-1)
    logits, index = flat.topk(min(topk, flat.numel()))
    cells = torch.stack([index // width, index % width], dim=1)
    return top_left_of_cell(cells, m), logits


def cell_grid(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """All feature cells (y, x) of an H×W map in row-major order: [H·W, 2]."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)


def window_boxes(tops: Tensor, m: int, scale: float = 1.0, stride: int = STRIDE) -> Tensor:
    """Boxes (x0, y0, x1, y1) of windows with top-left cells ``tops`` [N, 2].

    In pixels of the image that was resized by ``scale`` (resized = original · scale) before the
    network saw it, i.e. in original-image pixels; scale 1 gives resized-image pixels.
    """
    tops = tops.to(torch.float32)
    y0 = tops[:, 0] * stride
    x0 = tops[:, 1] * stride
    side = m * stride
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1) / scale


def window_centres(tops: Tensor, m: int, stride: int = STRIDE) -> Tensor:
    """Centres (x, y) of windows in resized-image pixels: [N, 2]."""
    tops = tops.to(torch.float32)
    return torch.stack([(tops[:, 1] + m / 2) * stride, (tops[:, 0] + m / 2) * stride], dim=1)


@dataclass(frozen=True)
class LabelRule:
    """Parameters of the positive/negative definition, in resized-image pixels."""

    m: int = 21
    stride: int = STRIDE
    pos_shift: float = 16.0
    neg_shift: float = 48.0
    canonical: float | None = None
    pos_scale_range: float = 0.25
    neg_scale_range: float = 1.0

    @property
    def window_side(self) -> float:
        return float(self.m * self.stride)

    @property
    def canonical_size(self) -> float:
        """Object size a window is made for: DeepMask's 128 of 224 unless set explicitly."""
        return self.canonical if self.canonical is not None else self.window_side * 128 / 224

    @classmethod
    def from_config(cls, config: dict) -> LabelRule:
        train = config["train"]
        return cls(
            m=config["model"]["m"],
            pos_shift=train["pos_shift"],
            neg_shift=train["neg_shift"],
            canonical=train["canonical"],
            pos_scale_range=train["pos_scale_range"],
            neg_scale_range=train["neg_scale_range"],
        )


def label_windows(
    tops: Tensor, boxes: Tensor, iscrowd: Tensor, rule: LabelRule
) -> tuple[Tensor, Tensor]:
    """Label windows ``tops`` [P, 2] against instances with ``boxes`` [N, 4] (xyxy, resized px).

    Returns ``labels`` [P] int8 (POSITIVE / NEGATIVE / IGNORE) and ``matched`` [P] long: the
    instance a positive window must segment (the positive candidate with the nearest centre),
    −1 elsewhere.
    """
    num = len(tops)
    labels = torch.full((num,), NEGATIVE, dtype=torch.int8, device=tops.device)
    matched = torch.full((num,), -1, dtype=torch.long, device=tops.device)
    if len(boxes) == 0:
        return labels, matched
    boxes = boxes.to(device=tops.device, dtype=torch.float32)
    iscrowd = iscrowd.to(device=tops.device, dtype=torch.bool)
    centres = window_centres(tops, rule.m, rule.stride)  # [P, 2] (x, y)
    obj_centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    shift = (centres[:, None, :] - obj_centres[None, :, :]).abs()  # [P, N, 2]
    max_shift = shift.max(dim=2).values
    size = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values  # [N]
    log_ratio = torch.log2(size / rule.canonical_size).abs()

    win = window_boxes(tops, rule.m, 1.0, rule.stride)  # resized pixels
    contained = (
        (boxes[None, :, 0] >= win[:, None, 0])
        & (boxes[None, :, 1] >= win[:, None, 1])
        & (boxes[None, :, 2] <= win[:, None, 2])
        & (boxes[None, :, 3] <= win[:, None, 3])
    )
    positive = (
        (max_shift <= rule.pos_shift)
        & (log_ratio <= rule.pos_scale_range)[None]
        & contained
        & ~iscrowd[None]
    )
    near = (max_shift <= rule.neg_shift) & (log_ratio < rule.neg_scale_range)[None]
    in_crowd = (
        (centres[:, None, 0] >= boxes[None, :, 0])
        & (centres[:, None, 0] < boxes[None, :, 2])
        & (centres[:, None, 1] >= boxes[None, :, 1])
        & (centres[:, None, 1] < boxes[None, :, 3])
        & iscrowd[None]
    )
    labels[(near | in_crowd).any(dim=1)] = IGNORE
    is_pos = positive.any(dim=1)
    distance = torch.where(
        positive, (shift**2).sum(dim=2), torch.full_like(max_shift, float("inf"))
    )
    labels[is_pos] = POSITIVE
    matched[is_pos] = distance[is_pos].argmin(dim=1)
    return labels, matched


def sample_windows(
    labels: Tensor, num: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Indices of up to ``num`` windows: positives up to the fraction, negatives fill the rest."""
    pos = torch.nonzero(labels == POSITIVE).flatten()
    neg = torch.nonzero(labels == NEGATIVE).flatten()
    num_pos = min(len(pos), int(num * positive_fraction))
    num_neg = min(len(neg), num - num_pos)
    pos = pos[torch.randperm(len(pos), generator=generator)[:num_pos].to(pos.device)]
    neg = neg[torch.randperm(len(neg), generator=generator)[:num_neg].to(neg.device)]
    return pos, neg


def mask_targets(
    masks: Tensor,
    instance: Tensor,
    tops: Tensor,
    m: int,
    stride: int = STRIDE,
    size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Ground-truth size×size masks of windows, and which of their pixels lie inside the image.

    ``masks`` [N, H, W] are the instance masks at the resized resolution and window i segments
    instance ``instance[i]``. The window's box is cut into size×size equal bins and output pixel
    (u, v) is the instance's share of bin (u, v), binarised at one half. With ``size`` = m (the
    default) a bin is feature cell (y0+u, x0+v), so the target lines up with the assembled
    window pixel for pixel; the ~DeepMask head asks for its own mask side (56). Returns
    (targets [K, size, size] in {0, 1}, valid [K, size, size] bool).
    """
    size = m if size is None else size
    boxes = window_boxes(tops, m, 1.0, stride).to(masks.device)
    rois = torch.cat([instance.to(masks.device)[:, None].float(), boxes], dim=1)
    samples = max(-(-m * stride // (2 * size)), 1)  # one sample per 2 px of a bin, rounded up
    share = roi_align(masks[:, None].float(), rois, (size, size), 1.0, samples, aligned=True)[:, 0]
    rois[:, 0] = 0
    inside = torch.ones((1, 1) + masks.shape[1:], device=masks.device)
    cover = roi_align(inside, rois, (size, size), 1.0, samples, aligned=True)[:, 0]
    valid = cover >= 0.5
    targets = (share >= 0.5 * cover) & valid
    return targets.float(), valid
