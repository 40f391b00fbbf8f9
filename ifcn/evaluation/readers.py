"""Proposals to evaluate, from proposals.h5 or a COCO results JSON, checked against the GT.

Both readers hand out one image's RLE counts and scores; results JSON also keep each result's
category rank, since COCOeval orders tied scores by category. Reading is most of what evaluation
costs besides the IoUs, so both readers work in bulk: the JSON through `read_results` (orjson,
checked column by column), proposals.h5 through `Proposals.iter_images` (large blocks, the RLE
column's chunks inflated by ISA-L).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ifcn.data.results import read_results
from ifcn.data.rle import RunStats
from ifcn.errors import IfcnError
from ifcn.evaluation.ground_truth import GroundTruth
from ifcn.provenance import file_sha256

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class ImageDetections:
    """One image's proposals as read: RLE counts, scores, what their runs say (area and columns,
    from the check of every reader), and COCOeval's tie order."""

    counts: list
    scores: np.ndarray
    masks: RunStats
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
        self.notes: list[str] = []
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
                    counts,
                    self.results.score[rows],
                    self.results.masks.take(rows),
                    self.results.category_rank[rows],
                )
        return out


class ProposalsH5:
    """Proposals from proposals.h5, read through its format module (`ifcn.proposals.format`).

    The file is opened and its image table checked once here, against the GT's too: an image
    id that both hold must have the same size and file name in both (proposals of other images
    that share ids and sizes, as fixed-size exports do, would score as if they were these
    images'). The dataset's SHA-256 recorded in the file is compared when it names the GT's
    file: a GT changed since (same images, other annotations) gets a note, not a refusal.
    Worker processes then open it themselves (`ProposalsPerProcess`) and read their images in
    large blocks, each image checked as every reader of the format checks it, the masks' runs
    summed too: pycocotools' IoU loops forever on a mask whose runs miss the image's size.
    """

    def __init__(self, path: Path, gt: GroundTruth, workers: int = 1):
        from ifcn.proposals.format import Proposals, ProposalsPerProcess

        self.path = path
        with Proposals(path) as proposals:
            ids, heights, widths = proposals.image_ids, proposals.heights, proposals.widths
            names, attrs = proposals.file_names, proposals.attrs
        rows = zip(ids.tolist(), heights.tolist(), widths.tolist(), names, strict=True)
        for image_id, h, w, name in rows:
            if image_id not in gt.sizes:
                continue
            if (h, w) != gt.sizes[image_id]:
                gh, gw = gt.sizes[image_id]
                raise IfcnError(
                    f"image {image_id}: RLEs are {h}x{w} but the image is {gh}x{gw} in {gt.path}",
                    path,
                )
            if name != gt.file_names[image_id]:
                raise IfcnError(
                    f"image {image_id} is {name!r} here but {gt.file_names[image_id]!r} in "
                    f"{gt.path}: proposals of other images?",
                    path,
                )
        self.notes = _dataset_notes(path, attrs, gt)
        self.image_ids = set(ids.tolist())
        self._row = {i: n for n, i in enumerate(ids.tolist())}
        self._reader = ProposalsPerProcess(path)

    def sha256(self) -> str:
        return file_sha256(self.path)

    def file_order(self, image_ids: Sequence[int]) -> list[int]:
        """`image_ids` sorted by where their rows lie in the file (those it lacks last)."""
        end = len(self._row)
        return sorted(image_ids, key=lambda i: self._row.get(i, end))

    def read(self, image_ids: Sequence[int]) -> dict[int, ImageDetections]:
        found = [i for i in image_ids if i in self._row]
        if not found:
            return {}
        images = self._reader.iter_checked(found)
        return {p.image_id: ImageDetections(p.rles, p.scores, masks) for p, masks in images}

    def close(self) -> None:
        """Close this process's handle of the file."""
        self._reader.close()


def _dataset_notes(path: Path, attrs: dict, gt: GroundTruth) -> list[str]:
    """A note when the file records the GT's own file with another SHA-256 than it has now."""
    recorded, digest = attrs.get("dataset"), attrs.get("dataset_sha256")
    if not isinstance(recorded, str) or not isinstance(digest, str) or not digest:
        return []
    try:
        same = os.path.samefile(recorded, gt.path)
    except (OSError, ValueError):
        return []
    if not same or digest == gt.sha256:
        return []
    return [
        f"note: {path} was made from {recorded} when its SHA-256 was {digest[:12]}..., now "
        f"{gt.sha256[:12]}...; its images agree by id, size and file name"
    ]


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
