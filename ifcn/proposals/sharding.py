"""Shards of an inference job: contiguous chunks of the sorted image ids.

Contiguous chunks make the shards' candidate files merge by concatenation, in image-id order.
"""

from __future__ import annotations

from collections.abc import Sequence


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' → (i, n) with 0 ≤ i < n; ValueError otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return index, count


def shard_ids(image_ids: Sequence[int], index: int, count: int) -> list[int]:
    """Shard `index` of `count`: a contiguous chunk of the sorted ids (chunks differ by ≤ 1)."""
    ids = sorted(int(i) for i in image_ids)
    return ids[index * len(ids) // count : (index + 1) * len(ids) // count]
