"""One image in, its candidate windows out: the network at every scale, ranking, assembling.

At every scale (shorter side) the network runs once. Objectness does not depend on the mask, so
the windows are ranked first and only the top ``pre_nms_topk`` of each scale are assembled
(``assemble_sparse``), which equals dense assembling followed by the same selection (tested) at
a fraction of the memory. ``infer_image`` takes any module with the model's forward contract
(``images [B, 3, H, W] → {"scores": [B, k², h, w], "objectness": [B, 1, h, w], ...}``), so
tests plug in hand-made score maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ifcn.assemble import assemble_sparse
from ifcn.data.image import image_tensor, resize_image
from ifcn.windows import STRIDE, rank_windows, window_boxes


def mask_size(model: nn.Module, m: int) -> int:
    """Side of the stored masks: m for the assembled instances, the ~DeepMask head's own side."""
    head = getattr(model, "mask_head", None)
    return int(head.mask_size) if head is not None else int(m)


def window_masks(model: nn.Module, out: dict[str, Tensor], tops: Tensor, m: int, k: int | None):
    """Mask probabilities [n, S, S] of the windows with top-left cells `tops` (one image)."""
    if "scores" in out:
        scores = out["scores"][0]
        if k is not None and scores.shape[0] != k * k:
            raise ValueError(f"the model gives {scores.shape[0]} score maps, expected k²={k * k}")
        return assemble_sparse(scores, tops, m, fill=float("-inf")).sigmoid()
    batch_index = torch.zeros(len(tops), dtype=torch.long, device=tops.device)
    return model.mask_head.forward_windows(out["features"], batch_index, tops).sigmoid()


@torch.inference_mode()
def infer_image(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[int],
    m: int,
    k: int | None = None,
    max_size: int | None = None,
    pre_nms_topk: int = 1000,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Candidates of one RGB uint8 image over all scales, best window first within each scale.

    Returns masks (n, S, S) float16 probabilities, boxes (n, 4) float32 window boxes in
    original-image pixels, objectness (n,) float32 logits and scale (n,) int8 indices.
    """
    parts: list[tuple[Tensor, Tensor, Tensor, int]] = []
    for index, short_side in enumerate(scales):
        resized, scale = resize_image(image, int(short_side), max_size)
        out = model(image_tensor(resized, device))
        tops, logits = rank_windows(out["objectness"][0, 0], m, pre_nms_topk)
        masks = window_masks(model, out, tops, m, k)
        boxes = window_boxes(tops, m, scale, STRIDE)
        parts.append((masks.half().cpu(), boxes.cpu(), logits.float().cpu(), index))
    return {
        "masks": torch.cat([p[0] for p in parts]).numpy(),
        "boxes": torch.cat([p[1] for p in parts]).numpy().astype(np.float32),
        "objectness": torch.cat([p[2] for p in parts]).numpy(),
        "scale": np.concatenate([np.full(len(p[2]), p[3], np.int8) for p in parts]),
    }
