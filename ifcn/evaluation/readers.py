"""Proposals to evaluate, from proposals.h5 or a COCO results JSON, checked against the GT.

Both readers hand out one image's RLE counts and scores; results JSON also keep each result's
category rank, since COCOeval orders tied scores by category. Reading is most of what evaluation
costs besides the IoUs, so both readers work in bulk: the JSON through `read_results` (orjson,
checked column by column), proposals.h5 by inflating the RLE column's gzip chunks directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from isal import isal_zlib

from ifcn.data.cocojson import read_results
from ifcn.errors import IfcnError
from ifcn.evaluation.ground_truth import GroundTruth
from ifcn.provenance import file_sha256

if TYPE_CHECKING:  # h5py is imported by the reader that needs it: start-up time counts
    import h5py

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class ImageDetections:
    """One image's proposals as read: RLE counts, scores, and COCOeval's tie order."""

    counts: list
    scores: np.ndarray
    tie: np.ndarray | None = None  # category rank of each result (JSON results only)


class ResultsJson:
    """Proposals given as a COCO results JSON, grouped by image and checked against the GT."""

    def __init__(self, path: Path, gt: GroundTruth, workers: int = 1):
        self.path = path
        results = read_results(path, gt.sizes, gt.category_rank, workers)
        self.results = results
        order = np.argsort(results.image_id, kind="stable")
        ids, first = np.unique(results.image_id[order], return_index=True)
        bounds = np.append(first, len(order))
        self.image_ids = set(ids.tolist())
        self._rows = {
            i: order[a:b] for i, a, b in zip(ids.tolist(), bounds[:-1], bounds[1:], strict=True)
        }

    def sha256(self) -> str:
        return self.results.sha256()

    def read(self, image_ids: Sequence[int]) -> dict[int, ImageDetections]:
        out = {}
        for image_id in image_ids:
            rows = self._rows.get(image_id)
            if rows is not None:
                counts = self.results.counts(rows)
                out[image_id] = ImageDetections(
                    counts, self.results.score[rows], self.results.category_rank[rows]
                )
        return out


class ProposalsH5:
    """Proposals from proposals.h5; workers open the file themselves and read their images.

    The file is opened and indexed once by `Proposals` (format, version, offsets, unique ids);
    a worker then reads the rows of its images and checks each image as every reader of the
    format does (`ifcn.proposals.format.check_image`: scores finite and non-increasing, boxes
    inside the image, scale indices valid, RLE text well formed), all but summing each mask's
    runs, which costs as much as the IoUs.
    """

    def __init__(self, path: Path, gt: GroundTruth, workers: int = 1):
        from ifcn.proposals.format import Proposals

        self.path = path
        with Proposals(path) as proposals:
            ids, heights, widths = proposals.image_ids, proposals.heights, proposals.widths
            offset = np.concatenate([[0], np.cumsum(proposals.counts)])
            self._num_scales = len(np.atleast_1d(proposals.attrs.get("scales", [])))
        for image_id, h, w in zip(ids.tolist(), heights.tolist(), widths.tolist(), strict=True):
            if image_id in gt.sizes and (h, w) != gt.sizes[image_id]:
                gh, gw = gt.sizes[image_id]
                raise IfcnError(
                    f"image {image_id}: RLEs are {h}x{w} but the image is {gh}x{gw} in {gt.path}",
                    path,
                )
        self.image_ids = set(ids.tolist())
        self._ids = ids.tolist()
        self._sizes = dict(zip(self._ids, zip(heights.tolist(), widths.tolist(), strict=True),
                               strict=True))  # fmt: skip
        self._row = {i: n for n, i in enumerate(self._ids)}
        self._offset = offset

    def sha256(self) -> str:
        return file_sha256(self.path)

    def file_order(self, image_ids: Sequence[int]) -> list[int]:
        """`image_ids` sorted by where their rows lie in the file (those it lacks last)."""
        end = len(self._row)
        return sorted(image_ids, key=lambda i: self._row.get(i, end))

    def read(self, image_ids: Sequence[int]) -> dict[int, ImageDetections]:
        rows = sorted(self._row[i] for i in image_ids if i in self._row)
        if not rows:
            return {}
        lo, hi = int(self._offset[rows[0]]), int(self._offset[rows[-1] + 1])
        import h5py

        from ifcn.proposals.format import check_image

        try:
            with h5py.File(self.path, "r") as f:
                scores = f["proposals/score"][lo:hi]
                boxes = f["proposals/box"][lo:hi]
                scales = f["proposals/scale"][lo:hi]
                texts = _read_rows(f["proposals/rle"], lo, hi)
        except (OSError, isal_zlib.error) as exc:
            raise IfcnError(f"cannot read proposal rows {lo}:{hi} ({exc})", self.path) from None
        out = {}
        for n in rows:
            a, b = int(self._offset[n]) - lo, int(self._offset[n + 1]) - lo
            image_id = self._ids[n]
            height, width = self._sizes[image_id]
            found = scores[a:b]
            check_image(image_id, height, width, found, boxes[a:b], texts[a:b], scales[a:b],
                        self._num_scales, self.path, runs=False)  # fmt: skip
            out[image_id] = ImageDetections(texts[a:b], found)
        return out


def _read_rows(column: h5py.Dataset, lo: int, hi: int) -> list[bytes]:
    """Rows lo:hi of a fixed-width byte-string column, as bytes without the NUL padding.

    A gzip-only chunked column is read chunk by chunk with `read_direct_chunk` and inflated
    here by ISA-L (the same zlib stream, inflated 2-3x faster than zlib does), which also skips
    HDF5's filter pipeline and its copies; any other layout goes through h5py.
    """
    direct = (
        column.chunks is not None
        and column.compression == "gzip"
        and not column.shuffle
        and not column.fletcher32
        and column.scaleoffset is None
        and len(column.shape) == 1
    )
    if not direct or hi <= lo:
        return column[lo:hi].tolist()  # NumPy strips the NUL padding
    rows = column.chunks[0]
    width = column.dtype.itemsize
    texts: list[bytes] = []
    for start in range(lo - lo % rows, hi, rows):
        mask, data = column.id.read_direct_chunk((start,))
        data = isal_zlib.decompress(data, bufsize=rows * width)  # one buffer, no copies
        if mask or len(data) != rows * width:
            return column[lo:hi].tolist()
        block = np.frombuffer(data, dtype=column.dtype)
        texts += block[max(lo - start, 0) : min(hi - start, rows)].tolist()
    return texts


def open_proposals(
    path: str | Path, gt: GroundTruth, workers: int = 1
) -> ProposalsH5 | ResultsJson:
    """proposals.h5 or a COCO results JSON, told apart by the HDF5 signature; a large JSON is
    parsed by `workers` processes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HDF5_SIGNATURE))
    except FileNotFoundError:
        raise IfcnError("no such file", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None
    return (ProposalsH5 if head == _HDF5_SIGNATURE else ResultsJson)(path, gt, workers)
