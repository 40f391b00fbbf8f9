"""candidates.h5: what `ifcn infer` hands to `ifcn nms` (internal format, version 2).

Inference keeps the top windows of every scale; NMS turns them into proposals later, so its
thresholds change without rerunning the network (DESIGN §6). A window's mask is a copy of k²
score maps' cells (the assembling module), so for the InstanceFCN head the file stores each
scale's score maps once, as logits, and the windows as top-left cells: NMS assembles the masks
it needs. At the paper's settings that is ~1.5 MB an image instead of ~5 MB of assembled masks.
The ~DeepMask head has no score maps; its masks are stored as they are.

The file is the per-image table of `ifcn.proposals.table`:

```
/                      attrs: format="ifcn-candidates", format_version=2, config (JSON),
                              checkpoint_sha256, dataset, scales, max_size (0: none), k, m,
                              head, pre_nms_topk, shard ("i/n"), objectness="logit",
                              storage ("score_maps" or "masks"), mask_size
/images/id, file_name, height, width
/images/map_height     (I, S)  int32    feature map of each scale (S = number of scales)
/images/map_width      (I, S)  int32
/images/resize         (I, S)  float64  resized / original size at each scale
/images/offset         (I+1,)  int64    windows of image i: /candidates rows offset[i]:offset[i+1]
/images/cells_offset   (I+1,)  int64    score-map cells of image i: /cells rows, scale by scale,
                                         each map's cells in row-major order
/candidates/top        (P, 2)  int16    top-left feature cell (y0, x0) of the window, at its scale
/candidates/objectness (P,)    float32  objectness *logit* (ranks exactly; no saturation)
/candidates/scale      (P,)    int8     index into the scales attribute
/candidates/masks      (P, S, S) float16 mask probabilities (storage "masks" only)
/cells/scores          (C, k²) float16  score-map logits (storage "score_maps"; else no rows)
```

Windows are best first within each scale, scales in order. A window's box in original-image
pixels is `windows.window_boxes(top, m, resize)`, computed on reading as inference computed it.
A shard of an inference job is a contiguous chunk of the sorted image ids, so shards merge by
concatenation (`ifcn merge`). Every image is checked on writing and on reading (`check`), its
resize factors against those its size, `scales` and `max_size` give (`check_resize`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ifcn.assemble import assembling_index
from ifcn.data.image import resized_shape
from ifcn.errors import IfcnError
from ifcn.proposals.table import MAX_SIDE, Column, TableReader, TableWriter
from ifcn.windows import window_boxes

FORMAT = "ifcn-candidates"
FORMAT_VERSION = 2
SCORE_MAPS, MASKS = "score_maps", "masks"
# Attributes the producer supplies; the writer adds format, format_version and objectness.
REQUIRED_ATTRS = ("config", "checkpoint_sha256", "dataset", "scales", "k", "m", "head", "shard")
# Attributes that every shard of one inference job shares (all but the shard itself).
SHARED_ATTRS = ("config", "checkpoint_sha256", "dataset", "dataset_sha256", "scales", "max_size",
                "k", "m", "head", "storage", "mask_size")  # fmt: skip
MAX_MAP_SIDE = 1 << 14  # feature cells per side; more is damage, not an image


@dataclass
class ImageCandidates:
    """One image's candidate windows: what `CandidateWriter.add` takes and the reader returns.

    `maps` (InstanceFCN) or `stored_masks` (~DeepMask) holds what the masks are made of;
    `masks` and `boxes` are computed from them on demand.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    tops: np.ndarray  # (n, 2) int: top-left feature cell (y0, x0) at the window's scale
    objectness: np.ndarray  # (n,) float32 logits
    scale: np.ndarray  # (n,) int8 index into the scales attribute
    resize: np.ndarray  # (S,) float64: resized / original size of each scale
    map_sizes: np.ndarray  # (S, 2) int: feature map (height, width) of each scale
    m: int
    maps: list[np.ndarray] | None = None  # per scale (k², h, w) float16 logits
    stored_masks: np.ndarray | None = None  # (n, S, S) float16 probabilities
    _masks: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.objectness)

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) float32 window boxes x0, y0, x1, y1 in original-image pixels."""
        out = np.zeros((len(self), 4), dtype=np.float32)
        tops = torch.from_numpy(np.asarray(self.tops, dtype=np.int64))
        for index in np.unique(self.scale).tolist():
            rows = np.flatnonzero(self.scale == index)
            out[rows] = window_boxes(tops[rows], self.m, float(self.resize[index])).numpy()
        return out

    @property
    def masks(self) -> np.ndarray:
        """(n, S, S) float16 mask probabilities (assembled from the score maps once)."""
        if self.stored_masks is not None:
            return self.stored_masks
        if self._masks is None:
            self._masks = assemble_windows(self.maps, self.tops, self.scale, self.m)
        return self._masks


def assemble_windows(
    maps: list[np.ndarray], tops: np.ndarray, scale: np.ndarray, m: int
) -> np.ndarray:
    """(n, m, m) float16 probabilities of the windows `tops` of per-scale score-map logits.

    The assembling module's copy (`assemble.assembling_index`), as one gather from the flat
    maps: sigmoid is applied to the maps first (k²·h·w values rather than n·m²), the same
    numbers since assembling only copies; cells outside a map are background (probability 0).
    """
    out = np.zeros((len(tops), m, m), dtype=np.float16)
    tops = torch.from_numpy(np.asarray(tops, dtype=np.int64))
    for index in np.unique(scale).tolist():
        rows = np.flatnonzero(scale == index)
        kk, height, width = maps[index].shape
        probabilities = torch.sigmoid(torch.from_numpy(maps[index]).float())
        padded = torch.nn.functional.pad(probabilities, (m, m, m, m)).half()
        plane, row = padded.shape[1] * padded.shape[2], padded.shape[2]
        offsets = torch.arange(m)
        relative = (assembling_index(int(round(kk**0.5)), m) * plane
                    + offsets[:, None] * row + offsets[None, :])  # fmt: skip
        base = (tops[rows, 0] + m) * row + tops[rows, 1] + m
        out[rows] = padded.reshape(-1)[base[:, None, None] + relative].numpy()
    return out


def _columns(attrs: Mapping[str, Any]) -> dict[str, dict[str, Column]]:
    k, side = int(attrs["k"]), int(attrs.get("mask_size") or attrs["m"])
    windows = {"top": Column("int16", (2,)), "objectness": Column("float32"),
               "scale": Column("int8")}  # fmt: skip
    if attrs.get("storage") == MASKS:
        windows["masks"] = Column("float16", (side, side), compress=False)
    return {"candidates": windows, "cells": {"scores": Column("float16", (k * k,))}}


def _image_columns(attrs: Mapping[str, Any]) -> dict[str, Column]:
    scales = len(np.atleast_1d(attrs["scales"]))
    return {
        "map_height": Column("int32", (scales,)),
        "map_width": Column("int32", (scales,)),
        "resize": Column("float64", (scales,)),
    }


def check(record: ImageCandidates, k: int, num_scales: int, side: int, path: Path) -> None:
    """Raise an IfcnError naming `path` and the image unless its candidates are sane."""
    where = f"image {record.image_id}"
    n = len(record.objectness)
    sizes = np.asarray(record.map_sizes).reshape(-1, 2)
    resize = np.asarray(record.resize, dtype=np.float64).reshape(-1)
    if sizes.shape[0] != num_scales or len(resize) != num_scales:
        raise IfcnError(f"{where}: map sizes or resize factors not one per scale", path)
    if (sizes < 1).any() or (sizes > MAX_MAP_SIDE).any():
        raise IfcnError(f"{where}: feature map sizes {sizes.tolist()} are not a map's", path)
    if not np.isfinite(resize).all() or (resize <= 0).any():
        raise IfcnError(f"{where}: resize factors {resize.tolist()} are not positive", path)
    tops, scale = np.asarray(record.tops), np.asarray(record.scale)
    if tops.shape != (n, 2) or scale.shape != (n,):
        raise IfcnError(f"{where}: windows, tops and scale indices of unequal length", path)
    if not np.isfinite(record.objectness).all():
        raise IfcnError(f"{where}: objectness holds NaN or infinity", path)
    if n and ((scale < 0).any() or (scale >= num_scales).any()):
        raise IfcnError(f"{where}: scale index outside 0..{num_scales - 1}", path)
    if n:
        centre = tops.astype(np.int64) + int(record.m) // 2
        size = sizes[scale.astype(np.int64)]
        if ((centre < 0) | (centre >= size)).any():
            raise IfcnError(f"{where}: a window is centred outside its feature map", path)
    if record.maps is not None:
        if len(record.maps) != num_scales:
            raise IfcnError(f"{where}: score maps not one set per scale", path)
        for index, (maps, (height, width)) in enumerate(zip(record.maps, sizes, strict=True)):
            if maps.shape != (k * k, height, width):
                raise IfcnError(
                    f"{where}: score maps of scale {index} are {maps.shape}, "
                    f"not ({k * k}, {height}, {width})",
                    path,
                )
            if np.isnan(maps).any():
                raise IfcnError(f"{where}: score maps of scale {index} hold NaN", path)
    else:
        masks = record.stored_masks
        if masks is None or masks.shape != (n, side, side):
            raise IfcnError(f"{where}: masks missing or not {side}x{side}", path)
        if not np.isfinite(masks).all() or (masks < 0).any() or (masks > 1).any():
            raise IfcnError(f"{where}: mask probabilities outside [0, 1]", path)


def resize_factors(height: int, width: int, scales: Sequence[int], max_size: int) -> np.ndarray:
    """(S,) the resize factors (resized / original) inference uses for a height × width image
    at `scales` (shorter sides) with the longer side capped at `max_size` (0: none)."""
    return np.array(
        [resized_shape(height, width, int(s), int(max_size) or None)[2] for s in scales],
        dtype=np.float64,
    )


def check_resize(record: ImageCandidates, scales: Sequence[int], max_size: int, path: Path) -> None:
    """Raise an IfcnError unless the image's resize factors are those its size, the scales and
    max_size give: every window box is computed from them, so a wrong factor moves and
    scales every proposal of the image silently."""
    expected = resize_factors(record.height, record.width, scales, max_size)
    found = np.asarray(record.resize, dtype=np.float64).reshape(-1)
    if found.shape != expected.shape or not np.allclose(found, expected, rtol=1e-9, atol=0):
        raise IfcnError(
            f"image {record.image_id}: resize factors {[round(v, 6) for v in found.tolist()]} "
            f"are not those of a {record.height}x{record.width} image at scales "
            f"{[int(s) for s in scales]}, max_size {int(max_size)}: "
            f"{[round(v, 6) for v in expected.tolist()]}",
            path,
        )


class CandidateWriter:
    """Streams images' candidates into candidates.h5; the file appears only on a clean close.

    Use as a context manager: an exception inside the block removes the temporary file and
    leaves the target path untouched. `attrs["head"] == "deepmask"` stores masks (of
    `attrs["mask_size"]`), any other head score maps.
    """

    def __init__(self, path: str | Path, attrs: Mapping[str, Any]):
        self.path = Path(path)
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise IfcnError(f"candidate file attributes missing: {', '.join(missing)}", self.path)
        storage = MASKS if attrs["head"] == "deepmask" else SCORE_MAPS
        self.attrs = {
            "max_size": 0,
            **attrs,
            "mask_size": int(attrs.get("mask_size") or attrs["m"]),
            "storage": storage,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "objectness": "logit",
        }
        self.k, self.m = int(attrs["k"]), int(attrs["m"])
        self.mask_size = self.attrs["mask_size"]
        self.num_scales = len(np.atleast_1d(attrs["scales"]))
        self.scales = [int(s) for s in np.atleast_1d(attrs["scales"])]
        self.max_size = int(self.attrs["max_size"] or 0)
        self._table = TableWriter(
            self.path, self.attrs, _columns(self.attrs), _image_columns(self.attrs)
        )

    def __enter__(self) -> CandidateWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, record: ImageCandidates) -> None:
        """Append one image's candidates (possibly none), checked first."""
        check(record, self.k, self.num_scales, self.mask_size, self.path)
        check_resize(record, self.scales, self.max_size, self.path)
        sizes = np.asarray(record.map_sizes, dtype=np.int64).reshape(-1, 2)
        image = {
            "id": int(record.image_id),
            "file_name": str(record.file_name),
            "height": int(record.height),
            "width": int(record.width),
            "map_height": sizes[:, 0],
            "map_width": sizes[:, 1],
            "resize": np.asarray(record.resize, dtype=np.float64),
        }
        windows = {
            "top": np.asarray(record.tops, dtype=np.int16),
            "objectness": np.asarray(record.objectness, dtype=np.float32),
            "scale": np.asarray(record.scale, dtype=np.int8),
        }
        cells = {}
        if record.stored_masks is not None:
            windows["masks"] = np.asarray(record.stored_masks, dtype=np.float16)
        else:
            scores = [maps.reshape(self.k * self.k, -1).T for maps in record.maps]
            cells = {"scores": np.concatenate(scores).astype(np.float16)}
        self._table.add(image, {"candidates": windows, "cells": cells})

    def close(self) -> None:
        self._table.close()

    def abort(self) -> None:
        self._table.abort()


class Candidates:
    """Reader of candidates.h5: the image table in memory, one image's rows on demand, each
    image checked as it is read. A truncated or foreign file is an IfcnError naming it."""

    def __init__(self, path: str | Path):
        self._table = TableReader(
            path, "candidates", FORMAT, (FORMAT_VERSION,), _columns, _image_columns
        )
        self.path = self._table.path
        self._attrs = self._table.attrs
        missing = [key for key in (*REQUIRED_ATTRS, "storage") if key not in self._attrs]
        if missing:
            self._table.close()
            raise IfcnError(f"candidates file lacks attributes: {', '.join(missing)}", self.path)
        sizes = [self._attrs[key] for key in ("k", "m", "mask_size")]
        if not all(isinstance(v, int) and 1 <= v <= 1024 for v in sizes) or sizes[1] < 2:
            self._table.close()
            raise IfcnError(f"candidates file has k, m, mask_size = {sizes}", self.path)
        scales, max_size = self._attrs["scales"], self._attrs.get("max_size", 0)
        scales = scales if isinstance(scales, list) else [scales]
        if not all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in (*scales, max_size or 1)):
            self._table.close()
            raise IfcnError(
                f"candidates file has scales {scales}, max_size {max_size}: not image sides",
                self.path,
            )
        self.scales, self.max_size = scales, int(max_size or 0)

    def __enter__(self) -> Candidates:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._table.close()

    def __len__(self) -> int:
        return len(self._table)

    @property
    def image_ids(self) -> np.ndarray:
        return self._table.image_ids

    @property
    def offset(self) -> np.ndarray:
        return self._table.offsets["candidates"]

    @property
    def num_candidates(self) -> int:
        return int(self.offset[-1])

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes as Python values; `config` parsed from its JSON."""
        return self._table.attrs

    @property
    def mask_size(self) -> int:
        return int(self._attrs["mask_size"])

    def read(self, n: int) -> ImageCandidates:
        """The candidates of the n-th image in file order, checked."""
        table, attrs = self._table, self._attrs
        lo, hi = int(self.offset[n]), int(self.offset[n + 1])
        windows = table.read("candidates", lo, hi)
        sizes = np.stack([table.image_values["map_height"][n],
                          table.image_values["map_width"][n]], axis=1).astype(np.int64)  # fmt: skip
        k, m = int(attrs["k"]), int(attrs["m"])
        record = ImageCandidates(
            image_id=int(table.image_ids[n]),
            file_name=table.file_names[n],
            height=int(table.heights[n]),
            width=int(table.widths[n]),
            tops=windows["top"].astype(np.int64),
            objectness=windows["objectness"],
            scale=windows["scale"],
            resize=table.image_values["resize"][n],
            map_sizes=sizes,
            m=m,
            stored_masks=windows.get("masks"),
        )
        if attrs.get("storage") != MASKS:
            first = int(table.offsets["cells"][n])
            last = int(table.offsets["cells"][n + 1])
            if (sizes[:, 0] * sizes[:, 1]).sum() != last - first:
                raise IfcnError(
                    f"image {record.image_id}: {last - first} score-map cells, but the maps "
                    f"of its scales have {int((sizes[:, 0] * sizes[:, 1]).sum())}",
                    self.path,
                )
            cells = table.read("cells", first, last)["scores"]
            bounds = np.cumsum(sizes[:, 0] * sizes[:, 1])[:-1]
            record.maps = [
                np.ascontiguousarray(part.T).reshape(k * k, height, width)
                for part, (height, width) in zip(np.split(cells, bounds), sizes, strict=True)
            ]
        check(record, k, len(sizes), self.mask_size, self.path)
        check_resize(record, self.scales, self.max_size, self.path)
        return record

    def get(self, image_id: int) -> ImageCandidates:
        return self.read(self._table.index(image_id))

    __getitem__ = get

    def __iter__(self) -> Iterator[ImageCandidates]:
        for n in range(len(self)):
            yield self.read(n)
