"""Shards of an inference job: contiguous chunks of the sorted image ids.

Contiguous chunks make the shards' candidate files merge by concatenation, in image-id order;
a partial merge holds several shards ('1,3/5') and merges with the rest like them.
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


def parse_shards(text: str) -> tuple[list[int], int]:
    """A candidates file's `shard` attribute: 'i/n' (one shard) or 'i,j,.../n' (what a partial
    merge writes) → (sorted indices, n); ValueError otherwise."""
    indices, slash, count = text.partition("/")
    try:
        parsed = [parse_shard(f"{index}/{count}") for index in indices.split(",")] if slash else []
    except ValueError:
        parsed = []
    if not parsed or len({i for i, _ in parsed}) != len(parsed):
        raise ValueError(f"shard must look like i/n or i,j,.../n (e.g. 0/4, 1,3/4), got {text!r}")
    return sorted(i for i, _ in parsed), parsed[0][1]


def shard_ids(image_ids: Sequence[int], index: int, count: int) -> list[int]:
    """Shard `index` of `count`: a contiguous chunk of the sorted ids (chunks differ by ≤ 1)."""
    ids = sorted(int(i) for i in image_ids)
    return ids[index * len(ids) // count : (index + 1) * len(ids) // count]
