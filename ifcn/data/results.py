"""COCO results JSON, the other door of the data contract (DESIGN §3): its one validator.

Every stage that reads a COCO results JSON (`ifcn evaluate` of other systems' proposals,
`ifcn classify evaluate` of the classifier's detections) goes through `read_results`, which
checks every result against the images it scores and keeps the results as columns: half a
million results take a fraction of a second, and a large file is parsed in parallel.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import multiprocessing
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from ifcn.data.jsonio import gc_paused, is_int, is_number, map_file, parse_json, read_bytes
from ifcn.data.rle import (
    RunStats,
    all_well_formed,
    is_size,
    joined_run_stats,
    rle_text_faults,
    well_formed,
)
from ifcn.errors import IfcnError
from ifcn.pool import Pool
from ifcn.signals import worker_process


@dataclass
class Results:
    """A checked COCO results JSON as columns, in file order."""

    path: Path
    image_id: np.ndarray  # (R,) int64
    score: np.ndarray  # (R,) float64
    category_rank: np.ndarray  # (R,) int64: position among the sorted category ids; -1: none
    masks: RunStats  # (R,) each: the masks' pixels, area and bounds (`ifcn.data.rle`)
    text: bytes | mmap.mmap  # the results' compressed RLE counts
    text_start: np.ndarray  # (R,) int64: result r's counts are text[start[r]:end[r]]
    text_end: np.ndarray  # (R,) int64
    raw: bytearray | mmap.mmap  # the file's bytes

    def counts(self, rows: np.ndarray) -> list[bytes]:
        """The RLE counts of the results `rows`."""
        text = self.text
        starts, ends = self.text_start[rows].tolist(), self.text_end[rows].tolist()
        return [text[a:b] for a, b in zip(starts, ends, strict=True)]

    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


_ABSENT = object()  # a result without category_id
# A results JSON this large is parsed in parts by worker processes (orjson holds the GIL).
PARALLEL_PARSE_BYTES = 1 << 24
_SEAM = re.compile(rb"\}\s*,\s*\{")  # between two objects of the top-level array, if anywhere


def read_results(
    path: str | Path,
    sizes: Mapping[int, tuple[int, int]],
    categories: Collection[int],
    workers: int = 1,
) -> Results:
    """Read and check a COCO results JSON of segmentations against the images it scores.

    Every result needs an integer `image_id`, a finite number `score` and a `segmentation` that is
    a compressed RLE (text counts of characters '0'..'o', the last one ending a number, whose
    runs add up to its size) whose size is its image's in `sizes`; `category_id`, if given, must
    be an integer of `categories` (COCOeval would drop others silently); it is kept as its rank
    among them, COCOeval's order of tied scores.
    Results of images `sizes` lacks pass (the caller decides). Checked column by column, so that
    half a million results take a fraction of a second; only when a check fails is the file
    walked result by result to name the first offender. With `workers` > 1 a large file is cut
    at seams between top-level objects and its parts parsed in parallel; a cut that is not
    between top-level objects leaves a part that is not JSON, and the file is then parsed whole.
    """
    path = Path(path)
    columns = None
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        raw = map_file(path)
        if len(raw) >= PARALLEL_PARSE_BYTES:
            columns = _parse_in_parts(raw, sizes, categories, workers)
    else:
        raw = read_bytes(path)
    if columns is None:
        with gc_paused():
            data = parse_json(raw, path)
            if not isinstance(data, list):
                raise IfcnError("not a COCO results JSON (top level is not a list)", path)
            found = _columns(data, sizes, categories)
            if found is None:
                _first_fault(data, sizes, categories, path)
        *arrays, text, offset = found
        columns = (*arrays, text, offset[:-1], offset[1:])
    return Results(path, *columns, raw)


def _columns(
    data: list, sizes: Mapping[int, tuple[int, int]], categories: Collection[int]
) -> tuple | None:
    """(image ids, scores, category ranks, mask stats, counts text, text offsets) of results
    that pass every check of `read_results`, or None if one does not."""
    try:
        if set(map(type, data)) - {dict}:
            return None
        image_ids = [r["image_id"] for r in data]
        scores = [r["score"] for r in data]
        segmentations = [r["segmentation"] for r in data]
        texts = [s["counts"] for s in segmentations]
        rle_sizes = [s["size"] for s in segmentations]
    except (KeyError, TypeError):
        return None
    category_ids = [r.get("category_id", _ABSENT) for r in data]
    if not (
        set(map(type, image_ids)) <= {int}
        and set(map(type, scores)) <= {int, float}
        and set(map(type, texts)) <= {str}
        and set(map(type, category_ids)) <= {int, object}
        and (set(categories) | {_ABSENT}).issuperset(category_ids)
        and all(texts)
    ):
        return None
    expected = {i: list(size) for i, size in sizes.items()}
    if (
        rle_sizes != [expected.get(i, s) for i, s in zip(image_ids, rle_sizes, strict=True)]
        or any(
            not is_size(s) for i, s in zip(image_ids, rle_sizes, strict=True) if i not in expected
        )
        or not set(map(type, itertools.chain.from_iterable(rle_sizes))) <= {int}  # not 120.0
    ):
        return None
    score = np.asarray(scores, dtype=np.float64)
    try:
        text = "".join(texts).encode("ascii")
    except UnicodeEncodeError:
        return None
    offset = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)), out=offset[1:])
    chars = np.frombuffer(text, np.uint8)
    if not np.isfinite(score).all() or not all_well_formed(chars, offset):
        return None
    # the runs add up to the image (pycocotools' IoU loops forever on any other total)
    pixels = np.fromiter((h * w for h, w in rle_sizes), np.int64, len(rle_sizes))
    masks = joined_run_stats(chars, offset)
    if (masks.covered != pixels).any():
        return None
    # a category's rank is its position among the sorted category ids (-1: no category_id)
    rank = {c: r for r, c in enumerate(sorted(categories))}
    ranks = np.fromiter(map(rank.get, category_ids, itertools.repeat(-1)), np.int64, len(data))
    return np.asarray(image_ids, np.int64), score, ranks, masks, text, offset


_PARTS: list[tuple[memoryview, int]] = []  # (part, where its counts text goes in _TEXT)
_TEXT: mmap.mmap | None = None
_CHECKS: tuple = ()


def _set_parts(parts: list[tuple[memoryview, int]], text: mmap.mmap, checks: tuple) -> None:
    global _PARTS, _TEXT, _CHECKS
    worker_process()
    _PARTS, _TEXT, _CHECKS = parts, text, checks


def _parse_part(k: int) -> tuple | None:
    """`_columns` of part k, its counts text written into the shared _TEXT, not sent back."""
    part, start = _PARTS[k]
    with gc_paused():
        try:
            data = orjson.loads(part)
        except orjson.JSONDecodeError:
            return None
        columns = _columns(data, *_CHECKS) if isinstance(data, list) else None
    if columns is None:
        return None
    *arrays, text, offset = columns
    assert _TEXT is not None
    _TEXT[start : start + len(text)] = text
    return (*arrays, offset + start)


def _parse_in_parts(
    raw: bytearray | mmap.mmap,
    sizes: Mapping[int, tuple[int, int]],
    categories: Collection[int],
    workers: int,
) -> tuple | None:
    """`_columns` of the whole file from `workers` parts parsed in parallel, or None.

    The parts are views of the file's bytes: at each seam `}, {` the comma becomes the closing
    `]` of one part and the space before `{` the opening `[` of the next (seams without a space
    are not cut), and both are put back once the parts are parsed. Each worker writes its
    counts text into a shared anonymous map at its part's own offset (a part's counts are no
    longer than the part), which forked workers inherit: nothing large goes through a pipe.
    """
    first, last = raw.find(b"["), raw.rfind(b"]")
    if first < 0 or raw[:first].strip() or raw[last + 1 :].strip():
        return None
    bounds, seams = [first], []
    for k in range(1, workers):
        seam = _SEAM.search(raw, max(bounds[-1] + 1, first + (last - first) * k // workers))
        if seam is None:
            break
        comma, opening = raw.find(b",", seam.start()), seam.end() - 2  # before `{`
        if opening > comma:
            seams.append((comma, opening, raw[opening]))
            raw[comma], raw[opening] = ord("]"), ord("[")
            bounds += [comma + 1, opening]
    bounds.append(last + 1)
    text = mmap.mmap(-1, len(raw))
    try:
        if not seams:
            return None
        view = memoryview(raw)
        parts = [(view[a:b], a) for a, b in zip(bounds[0::2], bounds[1::2], strict=True)]
        context = multiprocessing.get_context("fork")
        checks = (dict(sizes), set(categories))
        with Pool(len(parts), _set_parts, (parts, text, checks), context=context) as pool:
            columns = pool.map(_parse_part, range(len(parts)), chunksize=1)
        del parts, view
    finally:
        for comma, opening, space in seams:
            raw[comma], raw[opening] = ord(","), space
    if any(c is None for c in columns):
        return None
    ids, scores, cats, masks, offsets = zip(*columns, strict=True)
    masks = RunStats(*(np.concatenate(column) for column in zip(*masks, strict=True)))
    starts = np.concatenate([o[:-1] for o in offsets])
    ends = np.concatenate([o[1:] for o in offsets])
    return (np.concatenate(ids), np.concatenate(scores), np.concatenate(cats), masks, text,
            starts, ends)  # fmt: skip


def _first_fault(
    data: list, sizes: Mapping[int, tuple[int, int]], categories: Collection[int], path: Path
) -> None:
    """Raise an IfcnError naming the first result that breaks a rule of `read_results`."""
    for k, result in enumerate(data):
        where = f"result {k}"
        if not isinstance(result, dict):
            raise IfcnError(f"{where} is not an object", path)
        image_id = result.get("image_id")
        if not is_int(image_id):
            raise IfcnError(f"{where}: image_id {image_id!r} is not an integer", path)
        if not is_number(result.get("score")):
            raise IfcnError(f"{where}: score {result.get('score')!r} is not a finite number", path)
        if "category_id" in result:
            category = result["category_id"]
            if not is_int(category) or category not in categories:
                # COCOeval (useCats=0) would silently drop it: say so instead
                raise IfcnError(
                    f"{where}: category_id {category!r} is not in the ground truth", path
                )
        rle = result.get("segmentation")
        if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or not rle["counts"]:
            raise IfcnError(f"{where}: segmentation is not a compressed RLE", path)
        text = rle["counts"]
        if not text.isascii() or not well_formed([text.encode()])[0]:
            raise IfcnError(f"{where}: RLE counts are not COCO's compressed text", path)
        size = rle.get("size")
        if not is_size(size):
            raise IfcnError(f"{where}: RLE size {size!r} is not [height, width]", path)
        if image_id in sizes and size != list(sizes[image_id]):
            h, w = sizes[image_id]
            raise IfcnError(f"{where}: RLE size {size} but image {image_id} is {h}x{w}", path)
        fault = rle_text_faults([text], np.array([size[0] * size[1]]))[0]
        if fault is not None:
            raise IfcnError(f"{where}: {fault} ({size[0]}x{size[1]})", path)
    raise AssertionError("read_results found a fault that _first_fault does not")
