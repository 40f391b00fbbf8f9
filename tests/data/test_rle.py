"""COCO compressed RLE text: our encoder is pycocotools', the run check catches damage, and the
JSON validator's decoder (`rle_text_faults`) and proposals.h5's run check (`run_totals`) apply
one rule."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ifcn.data import rle
from ifcn.data.rle import (
    all_well_formed,
    encode_counts,
    encode_mask,
    rle_text_faults,
    run_stats,
    run_totals,
    well_formed,
)


def _reference_counts(text: bytes) -> list[int] | None:
    """maskApi.c's rleFrString written out in Python; None for text it cannot hold."""
    counts, p = [], 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                return None
            c = text[p] - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _masks(rng, h, w, n) -> np.ndarray:
    masks = (rng.random((h, w, n)) < rng.random()).astype(np.uint8)
    masks[..., 0] = 1
    masks[..., 1] = 0
    masks[: h // 2, :, 2 % n] = 1
    return np.asfortranarray(masks)


@pytest.mark.parametrize("seed", range(6))
def test_encode_counts_writes_pycocotools_text(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 30)), int(rng.integers(1, 40))
    masks = _masks(rng, h, w, 20)
    expected = [r["counts"] for r in mask_utils.encode(masks)]
    counts = [_reference_counts(text) for text in expected]
    got = encode_counts(np.concatenate(counts), np.array([len(c) for c in counts]))
    assert got == expected


@pytest.mark.parametrize("seed", range(6))
def test_run_totals_of_valid_masks_cover_their_image(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 30)), int(rng.integers(1, 40))
    texts = [r["counts"] for r in mask_utils.encode(_masks(rng, h, w, 300))]  # > 255 at once
    assert (run_totals(texts, h, w) == h * w).all()


def _damaged(rng, texts: list[bytes], kinds: tuple[str, ...]) -> list[bytes]:
    """Each text with one kind of damage drawn from `kinds`: a character dropped or replaced
    (by one of '('..'w'), one appended, the text cut short, or "none"."""
    damaged = []
    for text in texts:
        data = bytearray(text)
        kind = kinds[rng.integers(len(kinds))]
        if kind == "drop" and len(data) > 1:
            del data[rng.integers(len(data))]
        elif kind == "replace":
            data[rng.integers(len(data))] = int(rng.integers(40, 120))
        elif kind == "append":
            data += bytes([int(rng.integers(48, 112))])
        elif kind == "cut":
            data = data[: rng.integers(len(data) + 1)]
        damaged.append(bytes(data))
    return damaged


def test_run_totals_agree_with_a_plain_decoder_on_damaged_text():
    rng = np.random.default_rng(7)
    h, w = 20, 30
    texts = [r["counts"] for r in mask_utils.encode(_masks(rng, h, w, 60))]
    damaged = _damaged(rng, texts, ("drop", "replace", "append", "none"))
    totals = run_totals(damaged, h, w)
    for text, total in zip(damaged, totals, strict=True):
        counts = _reference_counts(text)
        if counts is None or not text:
            assert total == -1, text
        elif min(counts) >= 0:
            assert total == sum(counts), text
        else:  # a negative run: pycocotools reads it as a huge one, never h·w in all
            assert total != h * w, text
    assert (totals != h * w).sum() >= 30  # most damage shows


def test_run_totals_are_exact_sums_of_the_runs_and_refuse_negative_ones():
    rng = np.random.default_rng(5)
    texts, expected = [], []
    for _ in range(400):  # random runs, a few negative, of 1 to 40 counts; and some long ones
        counts = rng.integers(-3, 2000, int(rng.integers(1, 40))).tolist()
        if rng.random() < 0.1:
            counts[int(rng.integers(len(counts)))] = int(rng.integers(2**20, 2**28))
        texts.append(encode_counts(np.array(counts), np.array([len(counts)]))[0])
        runs = _reference_counts(texts[-1])
        assert runs == counts
        expected.append(sum(runs) if min(runs) >= 0 else -1)
    assert run_totals(texts).tolist() == expected
    assert 10 < expected.count(-1) < 390
    # a negative run in runs that add up to the image: pycocotools reads it as 2**32 - 5
    h, w = 30, 40
    sneaky = encode_counts(np.array([10, -5, h * w - 5]), np.array([3]))[0]
    assert run_totals([sneaky], h, w).tolist() == [-1]
    assert rle_text_faults([sneaky], np.array([h * w])) == ["RLE counts hold a negative run"]
    # one count, one count of several characters, a 7-character count
    assert run_totals([b"P2", b"0P2", b"1", b"O``````0"]).tolist() == [64, 64, 1, -1]


def test_run_stats_are_the_same_whatever_batch_the_texts_fall_in(monkeypatch):
    rng = np.random.default_rng(2)
    texts, masks = [], []
    for k in range(80):
        mask = rng.random((17, 23)) < (0.0 if k % 9 == 0 else 0.5)
        masks.append(mask)
        texts.append(encode_mask(mask)["counts"].encode())
    whole = run_stats(texts)
    on = [np.flatnonzero(m.T.reshape(-1)) for m in masks]  # column-major on pixels
    assert whole.covered.tolist() == [17 * 23] * 80
    assert whole.area.tolist() == [len(p) for p in on]
    for p, first, last in zip(on, whole.first_on.tolist(), whole.last_on.tolist(), strict=True):
        assert (first <= p.min() and last >= p.max()) if len(p) else last < first
    for chars in (1, 40, 700):  # one text per batch, a few, most in one
        monkeypatch.setattr(rle, "RUN_BATCH_CHARS", chars)
        assert all((a == b).all() for a, b in zip(run_stats(texts), whole, strict=True))


def test_run_totals_refuse_what_is_not_rle_text():
    assert run_totals([b"", b"\x00", b"3i", b"~~"], 5, 5).tolist() == [-1] * 4
    assert run_totals([], 5, 5).tolist() == []


def test_rle_texts_of_valid_masks_of_every_kind_decode_cleanly():
    rng = np.random.default_rng(0)
    texts, pixels = [], []
    for k in range(200):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        mask = rng.random((h, w)) < rng.random()
        mask = np.zeros_like(mask) if k % 5 == 0 else np.ones_like(mask) if k % 7 == 0 else mask
        texts.append(encode_mask(mask)["counts"])
        pixels.append(h * w)
    assert rle_text_faults(texts, np.array(pixels)) == [None] * len(texts)


def test_rle_texts_are_judged_the_same_whatever_batch_they_fall_in(monkeypatch):
    rng = np.random.default_rng(1)
    texts, pixels = [], []
    for k in range(60):
        h, w = (int(v) for v in rng.integers(5, 60, 2))
        text = encode_mask(rng.random((h, w)) < 0.5)["counts"]
        if k % 4 == 1:
            text = text[:-1] + "~"  # a character outside '0'..'o'
        elif k % 4 == 2:
            text += "1"  # one run too many
        texts.append(text)
        pixels.append(h * w)
    whole = rle_text_faults(texts, np.array(pixels))
    assert sum(f is not None for f in whole) == 30
    for chars in (1, 50, 400):  # one text per batch, texts split across batches, a few batches
        monkeypatch.setattr(rle, "RLE_BATCH_CHARS", chars)
        assert rle_text_faults(texts, np.array(pixels)) == whole


def test_a_joined_column_is_judged_as_its_texts_whatever_block_a_fault_falls_in(monkeypatch):
    rng = np.random.default_rng(2)
    texts = [r["counts"] for r in mask_utils.encode(_masks(rng, 20, 30, 40))]
    chars = np.frombuffer(b"".join(texts), np.uint8)
    offset = np.concatenate([[0], np.cumsum([len(t) for t in texts])])
    for block in (1, 7, 64, 1 << 22):  # the block size changes no answer
        monkeypatch.setattr(rle, "FORM_BLOCK_CHARS", block)
        assert all_well_formed(chars, offset)
        for position in (0, len(chars) // 2, len(chars) - 2):  # first, middle and last blocks
            for value in (ord("0") - 1, ord("o") + 1, 0, 255):  # either side of '0'..'o'
                damaged = chars.copy()
                damaged[position] = value
                assert not all_well_formed(damaged, offset), (block, position, value)
    # '0' and 'o', the ends of the characters of a count, are well formed; '/' and 'p' are not
    for texts, formed in (([b"0", b"o0"], True), ([b"0", b"/0"], False), ([b"p0"], False)):
        offset = np.concatenate([[0], np.cumsum([len(t) for t in texts])])
        joined = np.frombuffer(b"".join(texts), np.uint8)
        assert all_well_formed(joined, offset) == formed == bool(well_formed(texts).all())


def test_a_joined_column_is_checked_without_temporaries_of_its_size():
    """Every process that opens a COCO-sized record checks its 340 MB column: three
    temporaries of that size were a peak of 1 GB in each rank of a training."""
    text = b"o" * 63 + b"0"  # one count of 64 characters
    chars = np.frombuffer(text * (1 << 20), np.uint8)  # 64 MiB
    offset = np.arange(0, len(chars) + 1, len(text), dtype=np.int64)
    tracemalloc.start()
    try:
        assert all_well_formed(chars, offset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20  # a few blocks and the offsets' differences, not 3 x 64 MiB


def test_the_json_and_proposals_checks_judge_damaged_text_alike():
    rng = np.random.default_rng(11)
    h, w = 20, 30
    texts = [r["counts"] for r in mask_utils.encode(_masks(rng, h, w, 200))]
    damaged = _damaged(rng, texts, ("drop", "replace", "append", "cut", "none"))
    faults = rle_text_faults(damaged, np.full(len(damaged), h * w))
    form = ("are empty", "outside '0'..'o'", "end inside a number")
    formed = [not (f and any(kind in f for kind in form)) for f in faults]
    assert well_formed(damaged).tolist() == formed
    assert 20 < formed.count(False) < len(damaged) - 100  # faults of form, and others
    covers = run_totals(damaged, h, w) == h * w
    # a text of form the proposals check passes has runs covering the image iff the JSON
    # decoder finds no fault (which also refuses negative runs and over-long numbers)
    for text, fault, covered in zip(damaged, faults, covers.tolist(), strict=True):
        if fault is None:
            assert covered, text
        elif covered:
            assert "negative run" in fault or "longer than" in fault, (text, fault)
