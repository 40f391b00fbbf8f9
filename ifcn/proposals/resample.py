"""Window masks resized onto the image and binarised, read without building them pixel by pixel.

The rule (DESIGN §6): pixel (r, c) of the original image, centre (c + ½, r + ½), reads its
window's S×S mask bilinearly (edge-clamped, half-pixel centres: cv2.resize's convention) at
mask coordinate ((c + ½ − x0)·S/side − ½, …); pixels whose centre lies outside the window box
read background, and a pixel is on if its value exceeds the threshold. A value is interpolated
along y, then along x, each a two-term sum rounded as BLAS kernels round it (the first product
rounded, the second fused): bit for bit the products of dense bilinear weight matrices that
first defined the proposals (tests/proposals/reference_nms.py).

Along one axis a value is linear between two mask-cell centres (a *span*), which makes most of
the work unnecessary:
- all values of a span pair lie between its four corner cells, so a pair whose corners are all
  clearly above (or below) the threshold is settled whole (`_cell_classes`);
- down one column the value crosses the threshold at most once per span, so only the pixels
  next to a crossing, where rounding could decide, are evaluated exactly (`_Resampler.above`).
Tight boxes for NMS look only at the spans where a mask first and last turns on; the kept masks
come out as runs down the image's columns, COCO's RLE order. Everything runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ifcn.data.rle import encode_counts

OFF, MIXED, ON = 0, 1, 2
_ROUNDING = 1e-5  # bound on the rounding error of a resampled value in [0, 1], generously
_SLACK = 1e-6  # pixels added to either side of a band (float64 error is ~1e-12 of that)
_BOX_STEPS = 1 << 17  # window pixel steps (along one axis) handled at once for tight boxes
_RUN_STEPS = 1 << 14  # ... and when rendering masks


class _Axis:
    """Where windows [lo, hi) fall on the pixel grid of one image axis, and how they resample.

    first: first pixel inside (centre ≥ lo, clipped to [0, size]); count: pixels inside (centre
    < hi, clipped to size); step r is pixel first + r. `start`, `stop` [n, S+1]: the steps of
    each span, the interval between two mask-cell centres (span 0 before the first centre,
    span S after the last) within which resampling along this axis is linear.
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray, size: int, side: int):
        self._first = np.clip(np.ceil(lo - 0.5), 0, size)
        end = np.minimum(np.ceil(hi - 0.5), size)
        self.first = self._first.astype(np.int64)
        self.count = np.maximum(end - self._first, 0).astype(np.int64)
        self.lo, self.scale, self.side = lo, side / (hi - lo), side
        # span j ≥ 1 starts at the first step whose coordinate is at least j − 1
        n = len(lo)
        edge = np.arange(side, dtype=np.float64)[None]
        rows = np.arange(n)[:, None]
        start = np.ceil(self.row_of(rows, edge)).astype(np.int64)
        for _ in range(3):  # the exact coordinates move a guess by a step at most
            start = np.clip(start, 0, self.count[:, None])
            start -= (start > 0) & (self.coord(rows, start - 1) >= edge)
            start += (start < self.count[:, None]) & (self.coord(rows, start) < edge)
        start = np.clip(start, 0, self.count[:, None])
        self.start = np.concatenate([np.zeros((n, 1), np.int64), start], axis=1)
        self.stop = np.concatenate([start, self.count[:, None]], axis=1)

    def coord(self, w: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Mask coordinate (float64) of step r of windows w."""
        return (self._first[w] + r + 0.5 - self.lo[w]) * self.scale[w] - 0.5

    def row_of(self, w: np.ndarray, coord: np.ndarray) -> np.ndarray:
        """The (fractional) step of windows w at mask coordinate `coord`."""
        return (coord + 0.5) / self.scale[w] + self.lo[w] - self._first[w] - 0.5

    def weights(self, w: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, ...]:
        """Lower mask cell and bilinear weights (edge-clamped; float32) of step r of windows w."""
        clamped = np.clip(self.coord(w, r), 0, self.side - 1)
        index = np.minimum(np.floor(clamped), self.side - 2).astype(np.int64)
        upper = (clamped - index).astype(np.float32)
        return index, 1 - upper, upper

    def dense(self) -> tuple[np.ndarray, ...]:
        """`weights` of every step [n, L] (L = max count), and which steps are inside."""
        steps = np.arange(int(self.count.max()) if len(self.count) else 0)
        valid = steps[None] < self.count[:, None]
        index, w0, w1 = self.weights(np.arange(len(self.count))[:, None], steps[None])
        return index, w0 * valid, w1 * valid, valid


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a·b + c rounded once to float32 (a product of two float32 values is exact in float64)."""
    return (c.astype(np.float64) + a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., counts[0] − 1, 0, 1, ..., counts[1] − 1, ...: ranks within repeated groups."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def _cell_classes(masks: np.ndarray, threshold: float) -> np.ndarray:
    """[n, S+1, S+1] int8: per (row span, column span), whether every resampled value there is
    above the threshold (ON), none is (OFF), or it depends on the pixel (MIXED).

    A resampled value is a convex combination of its span pair's four (edge-clamped) mask
    cells, so it lies between their minimum and maximum, up to rounding.
    """
    padded = np.empty((len(masks), masks.shape[1] + 2, masks.shape[2] + 2), dtype=masks.dtype)
    padded[:, 1:-1, 1:-1] = masks  # edge-clamped: the first and last cells repeated
    padded[:, 0, 1:-1], padded[:, -1, 1:-1] = masks[:, 0], masks[:, -1]
    padded[:, :, 0], padded[:, :, -1] = padded[:, :, 1], padded[:, :, -2]
    above = padded > threshold + _ROUNDING
    reach = padded >= threshold - _ROUNDING
    on = above[:, :-1, :-1] & above[:, 1:, :-1] & above[:, :-1, 1:] & above[:, 1:, 1:]
    some = reach[:, :-1, :-1] | reach[:, 1:, :-1] | reach[:, :-1, 1:] | reach[:, 1:, 1:]
    classes = np.full(on.shape, MIXED, dtype=np.int8)
    classes[~some] = OFF
    classes[on] = ON
    return classes


class _Resampler:
    """Masks [n, S, S] (probabilities) of windows `boxes` [n, 4] (x0, y0, x1, y1 in image
    pixels), resampled onto a height × width image and binarised at `threshold`."""

    def __init__(
        self, masks: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float
    ):
        side = masks.shape[-1]
        if side < 2 or masks.shape[-2] != side:
            raise ValueError(f"masks must be square and at least 2×2, got {masks.shape[1:]}")
        self.masks = np.ascontiguousarray(masks, dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float64)
        self.ys = _Axis(boxes[:, 1], boxes[:, 3], height, side)
        self.xs = _Axis(boxes[:, 0], boxes[:, 2], width, side)
        self.height, self.threshold = height, threshold
        self.classes = _cell_classes(self.masks, threshold)

    def above(self, w: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Whether the value of window w at row step r and column step c is above the threshold
        (flat index arrays), computed exactly as the rule says."""
        masks = self.masks
        iy, wy0, wy1 = self.ys.weights(w, r)
        ix, wx0, wx1 = self.xs.weights(w, c)
        left = _fma(wy1, masks[w, iy + 1, ix], wy0 * masks[w, iy, ix])
        right = _fma(wy1, masks[w, iy + 1, ix + 1], wy0 * masks[w, iy, ix + 1])
        return _fma(wx1, right, wx0 * left) > self.threshold

    def tight_boxes(self) -> np.ndarray:
        """[n, 4] int64 boxes (x0, y0, x1, y1; exclusive ends) of the on pixels; zeros if none.

        As the reference defines them: a row is on if a value exceeds the threshold at the
        first or last step of some column span (along a row the value is linear within a span,
        so its maximum lies there), and a column likewise at the ends of the row spans.
        """
        y0, y1 = self._extent(columns=False)
        x0, x1 = self._extent(columns=True)
        return np.stack([x0, y0, x1, y1], axis=1)

    def _extent(self, columns: bool) -> tuple[np.ndarray, np.ndarray]:
        """Pixels [lo, hi) from the first to the last on row (column if `columns`); 0, 0 if none.

        Spans of rows whose cells are all ON or OFF (at the spans of columns with pixels) are
        settled from the cell classes; rows are evaluated only in MIXED spans, taken from either
        end until an on row is found.
        """
        lines, probes = (self.xs, self.ys) if columns else (self.ys, self.xs)
        cells = self.classes.transpose(0, 2, 1) if columns else self.classes
        cells = np.where((probes.stop > probes.start)[:, None, :], cells, OFF)
        status = np.where(lines.stop > lines.start, cells.max(axis=2), OFF)  # [n, S+1]
        lo = self._end(status, cells, lines, probes, columns, last=False)
        hi = self._end(status, cells, lines, probes, columns, last=True)
        found = lo >= 0
        return np.where(found, lines.first + lo, 0), np.where(found, lines.first + hi + 1, 0)

    def _end(self, status, cells, lines: _Axis, probes: _Axis, columns: bool, last: bool):
        """The first (or last) on line step of every window, -1 if none."""
        state = status.copy()
        out = np.full(len(state), -1, dtype=np.int64)
        todo = np.arange(len(state))
        while len(todo):
            live = state[todo] > OFF
            some = live.any(axis=1)
            todo, live = todo[some], live[some]
            if not len(todo):
                break
            span = live.shape[1] - 1 - live[:, ::-1].argmax(1) if last else live.argmax(1)
            start, stop = lines.start[todo, span], lines.stop[todo, span]
            on = state[todo, span] == ON
            out[todo[on]] = (stop - 1 if last else start)[on]
            todo, span, start, stop = todo[~on], span[~on], start[~on], stop[~on]
            # a MIXED span: all its lines, at both ends of every MIXED probe span
            pair, probe_span = np.nonzero(cells[todo, span] == MIXED)
            ends = np.stack(
                [probes.start[todo[pair], probe_span], probes.stop[todo[pair], probe_span] - 1], 1
            ).reshape(-1)
            pair = np.repeat(pair, 2)
            count = (stop - start)[pair]
            owner = np.repeat(pair, count)
            line = start[owner] + _ranks(count)
            probe = np.repeat(ends, count)
            rows, cols = (probe, line) if columns else (line, probe)
            hit = self.above(todo[owner], rows, cols)
            best = np.full(len(todo), -1 if last else np.iinfo(np.int64).max)
            (np.maximum if last else np.minimum).at(best, owner[hit], line[hit])
            found = np.zeros(len(todo), dtype=bool)
            found[owner[hit]] = True
            out[todo[found]] = best[found]
            state[todo[~found], span[~found]] = OFF
            todo = todo[~found]
        return out

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each binary mask changes value, in COCO's column-major order.

        Returns (window, position): position x·height + y of every pixel (y, x) whose value
        differs from the one before it column-major (the first pixel counts as following an
        off one; a mask that ends on the last pixel changes at height·width), sorted by window,
        then position.
        """
        ys, xs, t = self.ys, self.xs, self.threshold
        n, side = self.masks.shape[:2]
        index, w0, w1, valid = xs.dense()
        lx, spans = index.shape[1], side + 2  # spans 0..S, and S+1: after a column's last pixel
        # estimated values at the mask rows, per column step [n, Lx, S] (a product with the
        # bilinear weight matrix); the exact values are `above`'s
        weights = torch.zeros((n, lx, side))
        weights.scatter_(2, torch.from_numpy(index)[:, :, None], torch.from_numpy(w0)[:, :, None])
        weights.scatter_add_(2, torch.from_numpy(index)[:, :, None] + 1,
                             torch.from_numpy(w1)[:, :, None])  # fmt: skip
        rows = torch.bmm(weights, torch.from_numpy(self.masks).transpose(1, 2)).numpy()
        edged = np.concatenate([rows[:, :, :1], rows, rows[:, :, -1:]], axis=2)
        a, b = edged[:, :, :-1], edged[:, :, 1:]  # span j goes from a to b: [n, Lx, S+1]
        has_rows = ys.stop > ys.start  # [n, S+1]
        present = valid[:, :, None] & has_rows[:, None, :]
        on = present & (np.minimum(a, b) > t + _ROUNDING)
        mixed = present & ~on & (np.maximum(a, b) >= t - _ROUNDING)

        # MIXED segments (window, column, span): a band of pixels around the crossing
        flat = np.flatnonzero(mixed)
        w, rest = np.divmod(flat, lx * (side + 1))
        c, j = np.divmod(rest, side + 1)
        s0, s1 = ys.start[w, j], ys.stop[w, j]
        band_lo, band_hi, rising = self._bands(w, j, a.reshape(-1)[flat], b.reshape(-1)[flat])
        band_lo, band_hi = np.clip(band_lo, s0, s1), np.clip(band_hi, s0 - 1, s1 - 1)
        band = np.maximum(band_hi - band_lo + 1, 0)
        prefix = band_lo > s0  # rows s0..band_lo-1 are ~rising
        suffix = band_hi + 1 < s1  # rows band_hi+1..s1-1 are rising
        which = np.repeat(np.arange(len(flat)), band)
        rank = _ranks(band)
        pixel = self.above(w[which], band_lo[which] + rank, c[which])
        has_band = band > 0
        first_band = np.cumsum(band) - band  # where each segment's band starts in `pixel`
        band_first = np.zeros(len(flat), dtype=bool)
        band_last = np.zeros(len(flat), dtype=bool)
        band_first[has_band] = pixel[first_band[has_band]]
        band_last[has_band] = pixel[first_band[has_band] + band[has_band] - 1]
        first = np.where(prefix, ~rising, np.where(has_band, band_first, rising))
        last = np.where(suffix, rising, np.where(has_band, band_last, ~rising))

        # state of every segment's first and last pixel; the virtual span S+1 is off
        seg = w * lx * spans + c * spans + j
        first_state = np.zeros((n, lx, spans), dtype=bool)
        first_state[:, :, :-1] = on
        last_state = first_state.copy()
        first_state.reshape(-1)[seg] = first
        last_state.reshape(-1)[seg] = last
        # the state before each segment: the last pixel of the previous span with rows
        previous = np.zeros_like(last_state)
        before = np.maximum.accumulate(np.where(has_rows, np.arange(side + 1), -1), axis=1)
        previous[:, :, -1] = np.take_along_axis(last_state, before[:, None, -1:], 2)[:, :, 0]
        previous[:, :, -1] &= (before[:, -1] >= 0)[:, None]
        before = np.concatenate([np.full((n, 1), -1), before[:, :-1]], axis=1)
        if ((before == np.arange(side + 1) - 1) | (before < 0) | ~has_rows).all():
            previous[:, :, 1:-1] = last_state[:, :, :-2]  # spans with rows are consecutive
        else:
            gathered = np.take_along_axis(last_state, np.maximum(before, 0)[:, None, :], 2)
            previous[:, :, :-1] = gathered & (before >= 0)[:, None, :]
        live = np.concatenate([has_rows, np.ones((n, 1), dtype=bool)], axis=1)  # [n, S+2]
        entry = (first_state != previous) & valid[:, :, None] & live[:, None, :]

        # transitions inside MIXED segments: between band pixels (or the prefix and the first
        # band pixel), and where the suffix starts; all after the segment's entry
        after_prefix = prefix[which] & (pixel != ~rising[which])
        inside = np.where(rank > 0, pixel != np.roll(pixel, 1), after_prefix)
        closing = suffix & np.where(has_band, band_last != rising, prefix)
        per_segment = np.bincount(which[inside], minlength=len(flat))
        counts = entry.astype(np.int32).reshape(-1)
        counts[seg] += (per_segment + closing).astype(np.int32)
        offset = np.cumsum(counts, dtype=np.int32) - counts
        total = int(counts.sum())
        window = np.empty(total, dtype=np.int64)
        row = np.empty(total, dtype=np.int64)
        column = np.empty(total, dtype=np.int64)
        rises = np.empty(total, dtype=bool)

        # entries, at the first row of their span (the virtual span starts at the column's end)
        starts = np.concatenate([ys.start, ys.count[:, None]], axis=1)
        where = np.flatnonzero(entry)
        ew, erest = np.divmod(where, lx * spans)
        ec, ej = np.divmod(erest, spans)
        slot = offset[where]
        window[slot], column[slot], row[slot] = ew, ec, starts[ew, ej]
        rises[slot] = first_state.reshape(-1)[where]
        base = offset[seg] + entry.reshape(-1)[seg]
        before_segment = np.cumsum(per_segment) - per_segment
        owner = which[inside]
        slot = base[owner] + np.cumsum(inside)[inside] - 1 - before_segment[owner]
        window[slot], column[slot] = w[owner], c[owner]
        row[slot], rises[slot] = (band_lo[which] + rank)[inside], pixel[inside]
        slot = (base + per_segment)[closing]
        window[slot], column[slot] = w[closing], c[closing]
        row[slot], rises[slot] = band_hi[closing] + 1, rising[closing]

        position = (xs.first[window] + column) * self.height + ys.first[window] + row
        # a run down to a column's last image row and on from the next column's first row
        # gives a stop and a start at the same position: they cancel
        same = (position[1:] == position[:-1]) & (window[1:] == window[:-1])
        keep = np.ones(total, dtype=bool)
        keep[1:] &= ~same
        keep[:-1] &= ~same
        return window[keep], position[keep]

    def _bands(self, w, j, a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row steps [lo, hi] of span j of windows w where the value is within rounding of the
        threshold (unclipped; often none), and whether it rises down the span.

        The value goes linearly from `a` to `b` as the mask coordinate goes from j − 1 to j.
        """
        t = self.threshold
        slope = b.astype(np.float64) - a
        flat = np.abs(slope) < _ROUNDING
        safe = np.where(flat, 1.0, slope)
        crossing = (j - 1) + (t - a) / safe
        reach = _ROUNDING / np.abs(safe)
        lo = np.ceil(self.ys.row_of(w, crossing - reach) - _SLACK).astype(np.int64)
        hi = np.floor(self.ys.row_of(w, crossing + reach) + _SLACK).astype(np.int64)
        s0, s1 = self.ys.start[w, j], self.ys.stop[w, j]
        return np.where(flat, s0, lo), np.where(flat, s1 - 1, hi), slope > 0


def _chunks(cost: np.ndarray, budget: float) -> list[np.ndarray]:
    """Index chunks of windows, cheapest first, each within `budget` steps of work."""
    order = np.argsort(cost, kind="stable")
    chunks, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * cost[order[stop]] <= budget:
            stop += 1
        chunks.append(order[start:stop])
        start = stop
    return chunks


def _sides(boxes: np.ndarray) -> np.ndarray:
    """Pixels per axis that a window may span."""
    return (boxes[:, 2:] - boxes[:, :2]).max(axis=1) + 2


def tight_boxes(
    masks: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float = 0.5
) -> np.ndarray:
    """Tight boxes [n, 4] float32 (x0, y0, x1, y1; x1, y1 exclusive) of the binarised resized
    masks of windows `boxes`; an empty mask gets (0, 0, 0, 0). Those of `render` up to
    rounding at the threshold (the rule of tests/proposals/reference_nms.py exactly)."""
    out = np.zeros((len(masks), 4), dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64)
    for chunk in _chunks(_sides(boxes), _BOX_STEPS):
        resampler = _Resampler(masks[chunk], boxes[chunk], height, width, threshold)
        out[chunk] = resampler.tight_boxes()
    return out


def render(
    masks: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float = 0.5
) -> tuple[list[bytes], np.ndarray]:
    """COCO compressed RLE counts (height × width) and tight boxes [n, 4] float32 (x0, y0, x1,
    y1; zeros when empty) of the binarised resized masks, read off the very pixels encoded."""
    rles: list[bytes] = [b""] * len(masks)
    boxes = np.asarray(boxes, dtype=np.float64)
    total = height * width
    for chunk in _chunks(_sides(boxes), _RUN_STEPS):
        window, position = _Resampler(
            masks[chunk], boxes[chunk], height, width, threshold
        ).transitions()
        changes = np.bincount(window, minlength=len(chunk))
        # run lengths: from 0 to the first change, between changes, from the last to the end
        marks = np.insert(position, np.cumsum(changes) - changes, 0)
        ends = np.cumsum(changes + 1)
        marks = np.insert(marks, ends, total)
        counts = np.diff(marks)
        counts = np.delete(counts, ends[:-1] + np.arange(len(ends) - 1))
        for i, text in zip(chunk.tolist(), encode_counts(counts, changes + 1), strict=True):
            rles[i] = text
    tight = np.zeros((len(masks), 4), dtype=np.float32)
    if len(masks):
        tight[:] = mask_utils.toBbox([{"size": [height, width], "counts": c} for c in rles])
        tight[:, 2:] += tight[:, :2]
    return rles, tight


def masks_to_image(
    masks: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float = 0.5
) -> np.ndarray:
    """Full-image binary masks [n, height, width] uint8 (for tests and pictures; memory n·H·W)."""
    rles, _ = render(masks, boxes, height, width, threshold)
    if not rles:
        return np.zeros((0, height, width), dtype=np.uint8)
    decoded = mask_utils.decode([{"size": [height, width], "counts": c} for c in rles])
    return np.ascontiguousarray(decoded.transpose(2, 0, 1))
