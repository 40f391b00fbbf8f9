"""Proposals to evaluate, from proposals.h5 or a COCO results JSON, checked against the GT.

Both readers hand out one image's RLE counts and scores; results JSON also keep each result's
category rank, since COCOeval orders tied scores by category.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ifcn.errors import IfcnError
from ifcn.evaluation.ground_truth import GroundTruth, read_json
from ifcn.proposals.format import Proposals

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class ImageDetections:
    """One image's proposals as read: RLE counts, scores, and COCOeval's tie order."""

    counts: list
    scores: np.ndarray
    tie: np.ndarray | None = None  # category rank of each result (JSON results only)


class ResultsJson:
    """Proposals given as a COCO results JSON, grouped by image and checked against the GT."""

    def __init__(self, path: Path, gt: GroundTruth):
        self.path = path
        data = read_json(path)
        if not isinstance(data, list):
            raise IfcnError("not a COCO results JSON (top level is not a list)", path)
        counts: dict[int, list] = {}
        scores: dict[int, list] = {}
        ties: dict[int, list] = {}
        sizes = {i: list(size) for i, size in gt.sizes.items()}  # as JSON holds them
        ranks = gt.category_rank
        for k, result in enumerate(data):
            try:
                image_id = int(result["image_id"])
                rle, score = result["segmentation"], float(result["score"])
                size, text = rle["size"], rle["counts"]
                category = int(result.get("category_id", -1))
            except (KeyError, TypeError, ValueError):
                raise IfcnError(
                    f"result {k} lacks an integer image_id, a score or an RLE segmentation", path
                ) from None
            tie = ranks.get(category, -1)
            if tie < 0 and "category_id" in result:
                # COCOeval (useCats=0) would silently drop it: say so instead
                raise IfcnError(f"result {k}: category_id {category} is not in {gt.path}", path)
            if not isinstance(text, (str, bytes)):
                raise IfcnError(f"result {k}: segmentation is not a compressed RLE", path)
            if not math.isfinite(score):
                raise IfcnError(f"result {k}: score is not a finite number", path)
            if size != sizes.get(image_id, size):
                h, w = gt.sizes[image_id]
                raise IfcnError(
                    f"result {k}: RLE size {size} but image {image_id} is {h}x{w} in {gt.path}",
                    path,
                )
            counts.setdefault(image_id, []).append(text)
            scores.setdefault(image_id, []).append(score)
            ties.setdefault(image_id, []).append(tie)
        self.image_ids = set(counts)
        self._by_image = {
            i: ImageDetections(counts[i], np.asarray(scores[i]), np.asarray(ties[i]))
            for i in counts
        }

    def read(self, image_ids: Sequence[int]) -> dict[int, ImageDetections]:
        return {i: self._by_image[i] for i in image_ids if i in self._by_image}


class ProposalsH5:
    """Proposals from proposals.h5; workers open the file themselves and read their images."""

    def __init__(self, path: Path, gt: GroundTruth):
        self.path = path
        with Proposals(path) as proposals:
            ids, heights, widths = proposals.image_ids, proposals.heights, proposals.widths
        for image_id, h, w in zip(ids.tolist(), heights.tolist(), widths.tolist(), strict=True):
            if image_id in gt.sizes and (h, w) != gt.sizes[image_id]:
                gh, gw = gt.sizes[image_id]
                raise IfcnError(
                    f"image {image_id}: RLEs are {h}x{w} but the image is {gh}x{gw} in {gt.path}",
                    path,
                )
        self.image_ids = set(ids.tolist())

    def read(self, image_ids: Sequence[int]) -> dict[int, ImageDetections]:
        with Proposals(self.path) as proposals:
            wanted = [i for i in image_ids if i in proposals]
            return {
                r.image_id: ImageDetections(r.rles, r.scores) for r in proposals.iter_images(wanted)
            }


def open_proposals(path: str | Path, gt: GroundTruth) -> ProposalsH5 | ResultsJson:
    """proposals.h5 or a COCO results JSON, told apart by the HDF5 signature."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HDF5_SIGNATURE))
    except FileNotFoundError:
        raise IfcnError("no such file", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None
    return (ProposalsH5 if head == _HDF5_SIGNATURE else ResultsJson)(path, gt)
