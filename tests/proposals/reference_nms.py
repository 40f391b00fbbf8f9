"""The NMS of ifcn 0.1 (commit 373519a), kept verbatim as the reference for the fast path.

`ifcn.proposals.suppression` must give exactly these proposals (masks, boxes, order); the tests and
`benchmarks/postprocess.py` compare the two. It resizes every window's mask with dense bilinear
weight matrices (batched matrix products), which is exact but about 10x slower.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.ops import nms as box_nms

_BOX_ELEMENTS = 1 << 22
_FULL_ELEMENTS = 1 << 22


class _Axis:
    """Where windows [lo, hi) fall on the pixel grid of one image axis of length `size`.

    first: first pixel inside (centre ≥ lo, clipped to [0, size]); count: pixels inside
    (centre < hi, clipped to size); coord [n, L]: mask coordinate of pixel first + j,
    L = max count.
    """

    def __init__(self, lo: Tensor, hi: Tensor, size: int, mask_side: int):
        first = torch.ceil(lo - 0.5).clamp(0, size)
        end = torch.ceil(hi - 0.5).clamp(max=size)
        self.first = first.long()
        self.count = (end - first).clamp(min=0).long()
        self.length = int(self.count.max()) if len(self.count) else 0
        steps = torch.arange(self.length, dtype=lo.dtype)
        self.valid = steps[None].long() < self.count[:, None]
        scale = mask_side / (hi - lo)
        self.coord = (first[:, None] + steps[None] + 0.5 - lo[:, None]) * scale[:, None] - 0.5
        self.mask_side = mask_side

    def weights(self, steps: Tensor | None = None) -> Tensor:
        """[n, L, S] bilinear weights (edge-clamped) of pixels `steps` (all); 0 outside."""
        coord = self.coord if steps is None else self.coord.gather(1, steps)
        valid = self.valid if steps is None else self.valid.gather(1, steps)
        side = self.mask_side
        clamped = coord.clamp(0, side - 1)
        index = clamped.floor().clamp(max=side - 2).long()
        upper = (clamped - index).float() * valid
        matrix = torch.zeros((*coord.shape, side), dtype=torch.float32)
        matrix.scatter_(2, index[..., None], ((1 - upper) * valid)[..., None])
        matrix.scatter_(2, index[..., None] + 1, upper[..., None])
        return matrix

    def extremes(self) -> Tensor:
        """[n, E] pixel steps: the first and last inside pixel of every mask-cell span."""
        span = self.coord.floor().clamp(-1, self.mask_side - 1)
        starts = torch.ones_like(self.valid)
        starts[:, 1:] = span[:, 1:] != span[:, :-1]
        ends = torch.ones_like(self.valid)
        ends[:, :-1] = span[:, :-1] != span[:, 1:]
        ends |= torch.arange(self.length)[None] == (self.count - 1)[:, None]
        flag = self.valid & (starts | ends)
        num = min(self.length, 2 * (self.mask_side + 1))
        order = torch.argsort((~flag).to(torch.uint8), dim=1, stable=True)[:, :num]
        return torch.where(flag.gather(1, order), order, order[:, :1])


def _first_last(on: np.ndarray | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First and one-past-last True step of each row of `on` [n, L], and whether there is one."""
    on = torch.as_tensor(on)
    if on.shape[1] == 0:
        zeros = torch.zeros(len(on), dtype=torch.long)
        return zeros, zeros, zeros.bool()
    lo = on.to(torch.uint8).argmax(1)
    hi = on.shape[1] - on.flip(1).to(torch.uint8).argmax(1)
    return lo, hi, on.any(1)


def _span(on: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel range [lo, hi) of the `on` [n, L] steps counted from `first` ((0, 0) if none)."""
    lo, hi, any_on = _first_last(on)
    return torch.where(any_on, first + lo, 0), torch.where(any_on, first + hi, 0)


def _axes(masks: Tensor, boxes: Tensor, height: int, width: int) -> tuple[_Axis, _Axis]:
    side = masks.shape[-1]
    if side < 2 or masks.shape[-2] != side:
        raise ValueError(f"masks must be square and at least 2×2, got {tuple(masks.shape[1:])}")
    boxes = boxes.to(torch.float64)
    ys = _Axis(boxes[:, 1], boxes[:, 3], height, side)
    xs = _Axis(boxes[:, 0], boxes[:, 2], width, side)
    return ys, xs


def tight_boxes(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> Tensor:
    """Tight boxes [n, 4] (x0, y0, x1, y1; x1, y1 exclusive) of the binarised resized masks.

    `masks` [n, S, S] are probabilities of windows `boxes` [n, 4] in image pixels; an empty
    mask gets the box (0, 0, 0, 0). The box of `paste_masks`' output (up to float rounding at
    the threshold), from ≤ 2(S+1) sample rows and columns per window instead of the full mask.
    """
    if len(masks) == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    masks = masks.float()
    ys, xs = _axes(masks, boxes, height, width)
    rows = ys.weights() @ masks  # [n, Ly, S]
    row_values = rows @ xs.weights(xs.extremes()).transpose(1, 2)  # [n, Ly, Ex]
    some_rows = ys.weights(ys.extremes()) @ masks  # [n, Ey, S]
    col_values = some_rows @ xs.weights().transpose(1, 2)  # [n, Ey, Lx]
    if row_values.numel() == 0 or col_values.numel() == 0:  # every window outside the image
        return torch.zeros((len(masks), 4), dtype=torch.float32)
    rows_on = row_values.amax(2) > threshold
    cols_on = col_values.amax(1) > threshold
    y0, y1 = _span(rows_on, ys.first)
    x0, x1 = _span(cols_on, xs.first)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def paste_masks(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Binarised masks resized to their window boxes, as crops of the image.

    Returns (crops [n, Ly, Lx] bool, top-left pixel (y, x) [n, 2]): window i covers image
    pixels ``image[y:y+Ly, x:x+Lx] |= crops[i]`` (crop pixels beyond the image are False).
    """
    masks = masks.float()
    ys, xs = _axes(masks, boxes, height, width)
    full = (ys.weights() @ masks) @ xs.weights().transpose(1, 2)
    origin = torch.stack([ys.first, xs.first], 1).numpy()
    return (full > threshold).numpy(), origin


def masks_to_image(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> np.ndarray:
    """Full-image binary masks [n, height, width] uint8 (for tests and pictures; memory n·H·W)."""
    crops, origin = paste_masks(masks, boxes, height, width, threshold)
    out = np.zeros((len(crops), height, width), np.uint8)
    for i, (y, x) in enumerate(origin):
        h, w = min(crops.shape[1], height - y), min(crops.shape[2], width - x)
        out[i, y : y + h, x : x + w] = crops[i, :h, :w]
    return out


def _crop_rles(crops: np.ndarray, origin: np.ndarray, height: int, width: int) -> list[dict]:
    """Uncompressed COCO RLEs of crops placed at `origin` in a height × width image.

    COCO runs go down the columns; the runs change where a crop column changes value, read
    with a zero row above and below it. A column ending on the last image row and the next
    one starting on row 0 give two changes at one position, which cancel.
    """
    n, ly, lx = crops.shape
    padded = np.zeros((n, lx, ly + 2), dtype=bool)
    padded[:, :, 1:-1] = crops.transpose(0, 2, 1)
    flat = np.flatnonzero(padded[:, :, 1:] != padded[:, :, :-1])
    which, rest = np.divmod(flat, lx * (ly + 1))
    col, row = np.divmod(rest, ly + 1)
    pos = (origin[which, 1] + col).astype(np.int64) * height + origin[which, 0] + row
    same = (pos[1:] == pos[:-1]) & (which[1:] == which[:-1])
    keep = np.ones(len(pos), dtype=bool)
    keep[1:] &= ~same
    keep[:-1] &= ~same
    pos, which = pos[keep], which[keep]
    bounds = np.searchsorted(which, np.arange(n + 1))
    total = height * width
    return [
        {
            "counts": np.diff(pos[bounds[i] : bounds[i + 1]], prepend=0, append=total).tolist(),
            "size": [height, width],
        }
        for i in range(n)
    ]


def render_kept(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> tuple[list[bytes], Tensor]:
    """COCO compressed RLE counts (height × width) and tight boxes [n, 4] of the final masks.

    The boxes are read off the very pixels that are encoded; an empty mask gets (0, 0, 0, 0).
    """
    rles: list[bytes] = [b""] * len(masks)
    tight = torch.zeros((len(masks), 4), dtype=torch.float32)
    sides = _sides(boxes)
    for chunk in _chunks(sides * sides, _FULL_ELEMENTS):
        crops, origin = paste_masks(masks[chunk], boxes[chunk], height, width, threshold)
        encoded = mask_utils.frPyObjects(_crop_rles(crops, origin, height, width), height, width)
        for i, rle in zip(chunk.tolist(), encoded, strict=True):
            rles[i] = rle["counts"]
        first = torch.from_numpy(origin)
        y0, y1 = _span(torch.from_numpy(crops.any(2)), first[:, 0])
        x0, x1 = _span(torch.from_numpy(crops.any(1)), first[:, 1])
        tight[chunk] = torch.stack([x0, y0, x1, y1], dim=1).float()
    return rles, tight


def _chunks(cost: np.ndarray, budget: float) -> list[Tensor]:
    """Index chunks of windows, cheapest first, each within `budget` values of work."""
    order = np.argsort(cost, kind="stable")
    chunks, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * cost[order[stop]] <= budget:
            stop += 1
        chunks.append(torch.from_numpy(order[start:stop]))
        start = stop
    return chunks


def _sides(boxes: Tensor) -> np.ndarray:
    """Pixels per axis that a window's crop may span."""
    return ((boxes[:, 2:] - boxes[:, :2]).max(1).values + 2).numpy()


def nms_image(record, iou: float = 0.8, top_n: int = 1000, threshold: float = 0.5) -> dict:
    """One image's proposals from its candidates (anything with the fields of ImageCandidates)."""
    result = {
        "image_id": int(record.image_id),
        "file_name": str(record.file_name),
        "height": int(record.height),
        "width": int(record.width),
    }
    logits = torch.from_numpy(np.asarray(record.objectness, np.float32))
    finite = torch.isfinite(logits).nonzero().flatten()
    masks = torch.from_numpy(np.asarray(record.masks))[finite].float()
    boxes = torch.from_numpy(np.asarray(record.boxes, np.float32))[finite].double()
    logits = logits[finite]
    height, width = result["height"], result["width"]
    tight = torch.zeros((len(masks), 4), dtype=torch.float32)
    work_per_pixel = 5 * (masks.shape[-1] + 2)  # [L, S] and two [L, E] products per window
    for chunk in _chunks(_sides(boxes) * work_per_pixel, _BOX_ELEMENTS):
        tight[chunk] = tight_boxes(masks[chunk], boxes[chunk], height, width, threshold)
    nonempty = ((tight[:, 2] > tight[:, 0]) & (tight[:, 3] > tight[:, 1])).nonzero().flatten()
    keep = nonempty[box_nms(tight[nonempty], logits[nonempty], iou)[:top_n]]
    rles, final = render_kept(masks[keep], boxes[keep], height, width, threshold)
    drawn = ((final[:, 2] > final[:, 0]) & (final[:, 3] > final[:, 1])).numpy()
    keep = keep[torch.from_numpy(drawn)]
    result["scores"] = torch.sigmoid(logits[keep]).numpy().astype(np.float32)
    result["boxes"] = final[torch.from_numpy(drawn)].numpy()
    result["rles"] = [counts for counts, on in zip(rles, drawn, strict=True) if on]
    result["scales"] = np.asarray(record.scale)[finite.numpy()][keep.numpy()].astype(np.int8)
    return result
