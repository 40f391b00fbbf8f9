"""Candidates made by hand for NMS tests: any masks on any window boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def score_map_candidates(
    image_id: int,
    count: int,
    seed: int = 0,
    height: int = 60,
    width: int = 70,
    k: int = 3,
    m: int = 5,
    resize: tuple[float, ...] = (0.5, 0.9),
):
    """An ImageCandidates of random score maps at every scale (feature map of the resized
    image at stride 8) and `count` windows spread over the scales, best first per scale."""
    from ifcn.proposals.candidates import ImageCandidates

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
            "scales": [100, 150], "max_size": 0, "k": 3, "m": 5, "head": "instancefcn",
            "pre_nms_topk": 10, "shard": shard, **changes}  # fmt: skip
