"""COCO run-length encoding (RLE) of masks: writing it, reading it, and checking it before use,
for the JSON files (instances, results) and proposals.h5 alike.

The compressed text is pycocotools' (`rleToString` in maskApi.c): run lengths down the image's
columns, off first; each count, less the one two before it from the fourth count on, written 5
bits a character, low bits first, as characters from '0' (48) to 'o' (111), 0x20 marking that
more characters of the same count follow and 0x10 in the last one its sign. pycocotools trusts
the text: a corrupt count decodes to runs longer than the image and overruns the buffer `decode`
fills, and runs that add up to less than height × width decode into uninitialised memory. So
every reader checks the text where it enters, with one rule of form (`well_formed`: not empty,
only '0'..'o', the last count complete) and one of coverage (the runs cover exactly height ×
width pixels): `rle_text_faults` says why a text fails, decoding it in NumPy; `run_totals`
counts the pixels of many texts of one image size at once, which pycocotools computes in C.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from ifcn.data.jsonio import is_int

_FIRST, _LAST = 48, 112  # characters '0' .. 'o'
_MORE, _SIGN, _BITS = 0x20, 0x10, 0x1F
# pycocotools decodes a count of RLE text into a C int shifted by 5 bits per character: past
# 2**28 pixels (16384 x 16384) a run no longer fits the 6 characters it can shift safely.
MAX_PIXELS = 2**28
MAX_RLE_CHARS = 6
RLE_BATCH_CHARS = 1 << 15  # decoded at once: their arrays stay in cache and off fresh pages
RUN_BATCH_CHARS = 1 << 20  # summed at once by `joined_run_stats`
FORM_BLOCK_CHARS = 1 << 22  # checked at once by `all_well_formed`


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed RLE of a binary H×W mask, `counts` as str so that it serialises to JSON."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def bytes_rle(rle: dict) -> dict:
    """A compressed RLE as pycocotools takes it: `counts` as bytes, `size` as ints."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode()
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Binary H×W uint8 mask of a compressed RLE."""
    return mask_utils.decode(bytes_rle(rle))


def rle_area_bbox(rle: dict) -> tuple[int, list[float]]:
    """Mask area and tight [x, y, w, h] box of a compressed RLE (str or bytes counts)."""
    rle = bytes_rle(rle)
    area = int(mask_utils.area(rle))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return area, bbox


def mask_areas(rles: Sequence[dict]) -> np.ndarray:
    """pycocotools' areas (on pixels) of RLE objects, int64."""
    # pycocotools 2.0.11 with NumPy 2 fails on 256 or more RLEs at once (a uint8 length)
    parts = [mask_utils.area(list(rles[i : i + 255])) for i in range(0, len(rles), 255)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


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


def _joined(texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The texts' characters joined (uint8), and the start, stop and length of each text."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    chars = np.frombuffer(b"".join(texts), dtype=np.uint8)
    stop = np.cumsum(lengths)
    return chars, stop - lengths, stop, lengths


def _form_faults(
    chars: np.ndarray, start: np.ndarray, stop: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three faults of form, per text: empty, a character outside '0'..'o', the last count
    cut off (its continuation bit set)."""
    empty = lengths == 0
    bad = (chars < _FIRST) | (chars >= _LAST)
    outside = np.zeros(len(lengths), dtype=bool)
    if bad.any():
        outside[np.searchsorted(stop, np.flatnonzero(bad), side="right")] = True
    cut = np.zeros(len(lengths), dtype=bool)
    full = np.flatnonzero(~empty)
    cut[full] = ((chars[stop[full] - 1] - np.uint8(_FIRST)) & _MORE) != 0
    return empty, outside, cut


def well_formed(texts: Sequence[bytes]) -> np.ndarray:
    """Whether each text is well formed: not empty, only characters '0'..'o', the last count
    complete. Cheap (one pass over the bytes); what pycocotools needs not to read past a text.
    """
    empty, outside, cut = _form_faults(*_joined(texts))
    return ~(empty | outside | cut)


def all_well_formed(chars: np.ndarray, offset: np.ndarray) -> bool:
    """Whether every text of a joined column is `well_formed`: text i is chars[offset[i]:
    offset[i + 1]]. All or nothing, for a file of many texts: the bytes are read a block at a
    time, so that a column of a COCO-sized record (340 MB, memory-mapped) costs each process
    that opens it a few MB of temporaries rather than three times its size."""
    if (np.diff(offset) <= 0).any():
        return False
    span = np.uint8(_LAST - _FIRST)
    for start in range(0, len(chars), FORM_BLOCK_CHARS):
        # uint8 wraps below '0': one comparison finds the characters outside '0'..'o'
        if ((chars[start : start + FORM_BLOCK_CHARS] - np.uint8(_FIRST)) >= span).any():
            return False
    return not len(chars) or not ((chars[offset[1:] - 1] - np.uint8(_FIRST)) & _MORE).any()


class RunStats(NamedTuple):
    """What the runs of compressed RLE texts say, per text (see `run_stats`)."""

    covered: np.ndarray  # pixels the runs cover; -1: not a mask (not well formed, a count too
    #                      long, a negative run)
    area: np.ndarray  # on pixels
    first_on: np.ndarray  # position (column-major) at or before the first on pixel
    last_on: np.ndarray  # position at or after the last on pixel

    def take(self, rows: np.ndarray | slice) -> RunStats:
        return RunStats(*(column[rows] for column in self))


def run_stats(texts: Sequence[bytes]) -> RunStats:
    """`joined_run_stats` of texts (bytes); a text that is not well formed (empty, a character
    outside '0'..'o', the last count cut off) covers -1 pixels."""
    chars, start, _, lengths = _joined(texts)
    empty, outside, cut = _form_faults(chars, start, start + lengths, lengths)
    bad = empty | outside | cut
    if not bad.any():
        return joined_run_stats(chars, np.append(start, len(chars)))
    out = RunStats(*(np.full(len(texts), -1, dtype=np.int64) for _ in range(4)))
    keep = np.flatnonzero(~bad)
    if len(keep):
        chars, start, _, _ = _joined([texts[i] for i in keep.tolist()])
        for column, values in zip(out, joined_run_stats(chars, np.append(start, len(chars))),
                                  strict=True):  # fmt: skip
            column[keep] = values
    return out


def run_totals(texts: Sequence[bytes], height: int = 0, width: int = 0) -> np.ndarray:
    """Pixels covered by the runs of each compressed RLE text, or -1 where the text is not well
    formed (empty, a character outside '0'..'o', the last count cut off), holds a count longer
    than MAX_RLE_CHARS characters or a negative run. A mask of a height × width image must
    cover exactly height × width (the size is not needed to count)."""
    return run_stats(texts).covered


def joined_run_stats(chars: np.ndarray, offset: np.ndarray) -> RunStats:
    """`RunStats` of well-formed texts joined (uint8): text i is chars[offset[i]:offset[i+1]].

    Decoded as pycocotools reads them (`rleFrString`): each count's value from its characters,
    run m (m > 2) that value plus run m - 2. A text of a count longer than MAX_RLE_CHARS
    characters or of a negative run covers -1 (pycocotools keeps runs as 32-bit unsigned ints:
    a negative run is a huge one, and its IoU loops forever on runs that miss the image). The
    area counts the odd runs; the first on pixel is at or after run 0, the last at or before
    the end of the last odd run: bounds of the mask's columns, for nothing more than a scan.

    Vectorised over all texts at once, in a few passes: almost every count is one character
    (its 5 bits, read in int8), the few longer ones are decoded apart. Within a text the runs at
    odd counts from the second and at even counts from the third are running sums, and counts of
    one parity within a text have one parity in the whole array: each half of the array (even,
    odd indices) is summed once, and each text's sums and smallest run come from segment sums
    and minima of those running sums, less the sum before the text.
    """
    n = len(offset) - 1
    if n <= 0:
        return RunStats(*(np.zeros(max(n, 0), dtype=np.int64) for _ in range(4)))
    parts, start = [], 0
    while start < n:  # texts of about RUN_BATCH_CHARS characters at a time: a few MB of arrays
        stop = int(np.searchsorted(offset, offset[start] + RUN_BATCH_CHARS, "right")) - 1
        stop = min(max(stop, start + 1), n)
        parts.append(_run_stats(chars[offset[start] : offset[stop]],
                                offset[start : stop + 1] - offset[start]))  # fmt: skip
        start = stop
    if len(parts) == 1:
        return parts[0]
    return RunStats(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def _run_stats(chars: np.ndarray, offset: np.ndarray) -> RunStats:
    """`joined_run_stats` of one batch of texts (offset[0] == 0)."""
    n = len(offset) - 1
    code = chars - np.uint8(_FIRST)  # 0..63: the texts are well formed
    final = code < _MORE  # the last character of each count
    more = np.flatnonzero(~final)  # characters that continue a count: few
    # a one-character count's value, its top bit (0x10) the sign, in int8: no table lookup
    values = (code[final] ^ np.uint8(_SIGN)).view(np.int8) - np.int8(_SIGN)
    count = np.diff(offset) - np.diff(np.searchsorted(more, offset))  # counts per text
    first = np.cumsum(count) - count
    last = first + count
    # the counts' values, in two halves (even and odd indices), each contiguous
    halves = [values[parity::2].astype(np.int64) for parity in (0, 1)]
    bad = np.zeros(n, dtype=bool)
    if len(more):
        number = more - np.arange(len(more))  # the count each belongs to
        group = np.flatnonzero(np.diff(number, prepend=-1))
        longer, begin = number[group], more[group]
        size = np.diff(np.append(group, len(more))) + 1  # characters of each longer count
        bad[np.searchsorted(first, longer[size > MAX_RLE_CHARS], side="right") - 1] = True
        size = np.minimum(size, MAX_RLE_CHARS)
        value = np.zeros(len(longer), dtype=np.int64)
        for k in range(int(size.max())):
            has = np.flatnonzero(size > k)
            value[has] |= (code[begin[has] + k].astype(np.int64) & _BITS) << (5 * k)
        negative = code[begin + size - 1] & _SIGN != 0
        value[negative] -= np.int64(1) << (5 * size[negative])
        for parity in (0, 1):
            here = longer % 2 == parity
            halves[parity][longer[here] // 2] = value[here]
    heads = np.empty(n, dtype=np.int64)  # run 0 is its count
    for parity in (0, 1):
        here = first % 2 == parity
        heads[here] = halves[parity][first[here] // 2]
    covered, area, tail = heads.copy(), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    bad |= heads < 0
    for parity in (0, 1):
        half = halves[parity]
        half[first[first % 2 == parity] // 2] = 0  # run 0 stands alone
        sums = np.cumsum(half, out=half)
        lo, hi = (first + 1 - parity) // 2, (last + 1 - parity) // 2  # the text's range here
        some = np.flatnonzero(hi > lo)
        if not len(some):
            continue
        lo, hi = lo[some], hi[some]
        before = np.where(lo > 0, sums[np.maximum(lo - 1, 0)], 0)
        total = np.add.reduceat(sums, lo) - (hi - lo) * before
        covered[some] += total
        bad[some] |= np.minimum.reduceat(sums, lo) < before
        odd = (parity - first[some]) % 2 == 1  # this half holds the text's odd (on) runs
        area[some[odd]] = total[odd]
        # the last run, when it is an off run (an odd number of counts)
        ends_here = ((last[some] - 1) % 2 == parity) & (count[some] % 2 == 1) & (count[some] > 1)
        tail[some[ends_here]] = sums[hi[ends_here] - 1] - before[ends_here]
    tail[count == 1] = heads[count == 1]
    covered[bad] = -1
    return RunStats(covered, area, heads, covered - tail - 1)


def is_size(size: Any) -> bool:
    """An RLE's `size` as JSON holds it: [height, width], two positive integers."""
    return isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)


def rle_fault(rle: Any, height: int, width: int) -> str | None:
    """Why a JSON RLE cannot be a mask of a height×width image, or None. Uncompressed counts are
    checked here; compressed text only for its type (`rle_text_faults` decodes it)."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        return "segmentation is neither a polygon list nor an RLE"
    size = rle["size"]
    if not is_size(size):
        return f"RLE size {size!r} is not [height, width]"
    if size != [height, width]:
        return f"RLE size {size} differs from its image's [{height}, {width}]"
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return None
    if not isinstance(counts, list) or not {int}.issuperset(map(type, counts)):  # `is_int`
        return "RLE counts are neither a string nor a list of integers"
    if counts and min(counts) < 0:
        return "RLE counts hold a negative run"
    if sum(counts) != height * width:
        return f"RLE runs cover {sum(counts)} pixels, the image has {height * width}"
    return None


def rle_text_faults(texts: list[str | bytes], pixels: np.ndarray) -> list[str | None]:
    """Why each compressed RLE text is not a mask of `pixels[i]` pixels, or None if it is.

    Decodes the texts vectorised, in batches of about RLE_BATCH_CHARS characters, exactly as
    pycocotools' rleFrString reads them (5 bits per character from '0', a continuation bit, a
    sign bit on the last character, runs after the third stored as differences to the run two
    before), and requires the texts `well_formed`, no number longer than MAX_RLE_CHARS, no
    negative run, and runs that add up to the image's pixel count.
    """
    raw = [t.encode() if isinstance(t, str) else bytes(t) for t in texts]
    pixels = np.asarray(pixels)
    ends = np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw))).tolist()
    faults: list[str | None] = []
    start = 0
    while start < len(raw):
        limit = (ends[start - 1] if start else 0) + RLE_BATCH_CHARS
        stop = max(start + 1, bisect.bisect_right(ends, limit, lo=start))
        faults += _rle_text_faults(raw[start:stop], pixels[start:stop])
        start = stop
    return faults


def _rle_text_faults(raw: list[bytes], pixels: np.ndarray) -> list[str | None]:
    """`rle_text_faults` of one batch of texts (as bytes)."""
    chars, start, stop, lengths = _joined(raw)
    faults: list[str | None] = [None] * len(raw)

    def fail(indices: np.ndarray, reason: str) -> None:
        for i in np.unique(indices).tolist():
            faults[i] = faults[i] or reason

    empty, outside, cut = _form_faults(chars, start, stop, lengths)
    fail(np.flatnonzero(empty), "RLE counts are empty")
    fail(np.flatnonzero(outside), "RLE counts hold a character outside '0'..'o'")
    fail(np.flatnonzero(cut), "RLE counts end inside a number")
    good = ~(empty | outside | cut)
    if not good.any():
        return faults
    index = np.flatnonzero(good)
    codes = chars - np.uint8(_FIRST)
    if not good.all():
        codes = codes[np.repeat(good, lengths)]
        lengths = lengths[good]
    starts = np.concatenate([[0], np.cumsum(lengths)])

    last = (codes & _MORE) == 0  # the last character of a number
    ends = np.flatnonzero(last)
    begins = np.concatenate([[0], ends[:-1] + 1])
    chars_per_number = ends - begins + 1
    numbers = np.add.reduceat(last, starts[:-1], dtype=np.int64)  # per text
    owner = np.repeat(np.arange(len(lengths)), numbers)
    fail(
        index[owner[chars_per_number > MAX_RLE_CHARS]],
        f"RLE counts hold a number longer than {MAX_RLE_CHARS} characters",
    )
    values = (codes[begins] & _BITS).astype(np.int64)
    more = np.flatnonzero(chars_per_number > 1)
    for k in range(1, MAX_RLE_CHARS):
        more = more[chars_per_number[more] > k]
        values[more] |= (codes[begins[more] + k] & _BITS).astype(np.int64) << (5 * k)
    negative = np.flatnonzero(codes[ends] & _SIGN)
    values[negative] |= np.left_shift(-1, 5 * np.minimum(chars_per_number[negative], MAX_RLE_CHARS))

    first = np.concatenate([[0], np.cumsum(numbers)[:-1]])  # first number of each text
    position = np.arange(len(values)) - np.repeat(first, numbers)
    runs = values.copy()
    for parity, begin in ((1, 1), (0, 2)):  # run m (m > 2) adds run m - 2 of its own text
        chain = np.flatnonzero((position >= begin) & ((position & 1) == parity))
        total = np.cumsum(values[chain])
        head = np.flatnonzero(position[chain] == begin)
        base = total[head] - values[chain[head]]
        runs[chain] = total - np.repeat(base, np.diff(np.append(head, len(chain))))
    fail(index[owner[runs < 0]], "RLE counts hold a negative run")
    covered = np.add.reduceat(runs, first)
    for i in np.flatnonzero(covered != pixels[index]).tolist():
        j = index[i]
        faults[j] = faults[j] or f"RLE runs cover {covered[i]} pixels, the image has {pixels[j]}"
    return faults
