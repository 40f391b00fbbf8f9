"""COCO compressed RLE text, many masks at a time: writing it, and checking it before use.

The text is pycocotools' (`rleToString` in maskApi.c): run lengths down the image's columns,
off first; each count, less the one two before it from the fourth count on, written 5 bits a
character, low bits first, as characters from '0' (48) to 'o' (111), 0x20 marking that more
characters of the same count follow and 0x10 in the last one its sign. pycocotools trusts the
text: a mask whose runs add up to less than height × width decodes into uninitialised memory.
So every reader of proposals.h5 checks the runs of every mask (`run_totals`), which pycocotools
computes in C: the area of the mask counts its on runs, and the area of the same text with a
zero run put in front counts its off runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

_FIRST, _LAST = 48, 112  # characters '0' .. 'o'
_MORE, _SIGN, _BITS = 0x20, 0x10, 0x1F


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., counts[0] − 1, 0, 1, ..., counts[1] − 1, ...: ranks within repeated groups."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def _characters(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The characters of each value (int64) and how many each takes, as a flat uint8 array."""
    value = values.astype(np.int64)
    # a value takes the fewest 5-bit groups whose top bit (0x10, the sign) matches its sign
    magnitude = np.where(value < 0, ~value, value)
    size = np.ones(len(value), dtype=np.int64)
    for groups in range(1, 13):
        longer = magnitude >= np.int64(1) << (5 * groups - 1)
        if not longer.any():
            break
        size += longer
    width = int(size.max()) if len(size) else 0
    shifts = 5 * np.arange(width, dtype=np.int64)
    chars = ((value[:, None] >> shifts[None]) & _BITS) + _FIRST
    chars += _MORE * (np.arange(width)[None] < size[:, None] - 1)
    return chars[np.arange(width)[None] < size[:, None]].astype(np.uint8), size


def encode_counts(counts: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """COCO's compressed RLE text of several masks' run lengths at once.

    `counts` holds the run lengths (off first) of every mask, mask after mask, and `lengths`
    how many each mask has (at least one). Equal to pycocotools' encoding, byte for byte.
    """
    rank = _ranks(lengths)
    value = counts.astype(np.int64)
    later = np.flatnonzero(rank > 2)
    value[later] -= counts[later - 2]
    text, size = _characters(value)
    per_mask = np.add.reduceat(size, np.cumsum(lengths) - lengths)
    ends = np.cumsum(per_mask)
    return [text[end - n : end].tobytes() for end, n in zip(ends, per_mask, strict=True)]


def _value(chars: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The values whose characters are chars[start:stop] (one value each, stop > start)."""
    size = stop - start
    value = np.zeros(len(start), dtype=np.int64)
    for k in range(int(size.max()) if len(size) else 0):
        has = k < size
        value[has] |= (chars[start[has] + k].astype(np.int64) - _FIRST & _BITS) << (5 * k)
    negative = (chars[stop - 1].astype(np.int64) - _FIRST) & _SIGN != 0
    value[negative] -= np.int64(1) << (5 * size[negative])
    return value


def well_formed(texts: Sequence[bytes]) -> np.ndarray:
    """Whether each text is well formed: not empty, only characters '0'..'o', the last count
    complete. Cheap (one pass over the bytes); what pycocotools needs not to read past a text.
    """
    return _well_formed(texts)[0]


def _well_formed(texts: Sequence[bytes]) -> tuple[np.ndarray, ...]:
    """`well_formed` and the joined characters, start, stop and length of each text."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    chars = np.frombuffer(b"".join(texts), dtype=np.uint8)
    stop = np.cumsum(lengths)
    start = stop - lengths
    good = lengths > 0
    last = chars[stop[good] - 1]
    good[good] = (last >= _FIRST) & (last < _FIRST + _MORE)  # the last count is complete
    bad = (chars < _FIRST) | (chars >= _LAST)
    if bad.any():
        good &= np.add.reduceat(bad, np.minimum(start, len(chars) - 1)) == 0
    return good, chars, start, stop, lengths


def run_totals(texts: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """Pixels covered by the runs of each compressed RLE text, or -1 where the text is not
    well formed (empty, a character outside '0'..'o', the last count cut off). A mask of a
    height × width image must cover exactly height × width.
    """
    n = len(texts)
    out = np.full(n, -1, dtype=np.int64)
    good, chars, start, stop, lengths = _well_formed(texts)
    keep = np.flatnonzero(good)
    if not len(keep):
        return out
    # The same text with a zero run in front: its area counts the original's off runs. Its
    # counts are 0, c0, c1, c2, ...: the text of c0 and c1, then c2 − c0 (the fourth count is
    # written less the second), then the original's text from its fourth count on, unchanged.
    ends = np.flatnonzero(chars - _FIRST < _MORE)  # the last character of every count
    start, stop, lengths = start[keep], stop[keep], lengths[keep]
    first = np.searchsorted(ends, start)
    three = np.searchsorted(ends, stop) - first >= 3
    at = [ends[np.minimum(first + i, len(ends) - 1)] + 1 for i in range(3)]  # count i ends
    cut = np.where(three, at[1], stop)  # keep start..cut, replace cut..rest by c2 − c0
    rest = np.where(three, at[2], stop)
    x0 = _value(chars, start, at[0])
    x2 = _value(chars, np.where(three, at[1], start), np.where(three, at[2], at[0]))
    fourth, size = _characters(np.where(three, x2 - x0, 0))
    fourth = fourth[np.repeat(three, size)]
    size = np.where(three, size, 0)
    dropped = rest - cut
    kept = np.delete(chars, _ranks(dropped) + np.repeat(cut, dropped))
    # positions in `kept`: each text starts (and its fourth count goes) earlier by what the
    # texts before it lost
    lost = np.cumsum(dropped) - dropped
    where = np.concatenate([start - lost, np.repeat(cut - lost, size)])
    # a text's fourth count goes before the next text's '0' at the same position
    order = np.argsort(2 * where + np.repeat([1, 0], [len(start), len(fourth)]), kind="stable")
    values = np.concatenate([np.full(len(start), _FIRST, np.uint8), fourth])
    shifted = np.insert(kept, where[order], values[order])
    begins = start - lost + np.arange(len(start)) + np.cumsum(size) - size
    ends = begins + lengths + 1 - dropped + size
    data = shifted.tobytes()
    texts_off = [data[b:e] for b, e in zip(begins.tolist(), ends.tolist(), strict=True)]
    kept_texts = texts if len(keep) == n else [texts[i] for i in keep.tolist()]
    out[keep] = _areas(kept_texts, height, width) + _areas(texts_off, height, width)
    return out


def _areas(texts: list[bytes], height: int, width: int) -> np.ndarray:
    """pycocotools' areas (on pixels) of compressed RLE texts, int64."""
    size = [height, width]
    rles = [{"size": size, "counts": text} for text in texts]
    # pycocotools 2.0.11 with NumPy 2 fails on 256 or more RLEs at once (a uint8 length)
    parts = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
