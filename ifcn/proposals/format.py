"""proposals.h5, the public proposal file (DESIGN §7): a streaming writer, a random-access reader.

The file is the per-image table of `ifcn.proposals.table` with one row group, `proposals`:
score, box, rle and scale columns, and `/images/offset` saying which rows belong to which image,
so one image is a slice and the whole file is a handful of bulk reads. `/proposals/rle` holds
COCO compressed RLE counts NUL-padded to the longest (HDF5 compresses only fixed-size data, and
the RLE text is most of the file); readers get plain `bytes` back.

Every image is checked where it enters, by the writer before it is written and by the reader
whenever it is read, with one rule (docs/proposals-format.md): scores finite and non-increasing,
boxes finite and inside the image, scale indices inside the `scales` attribute, and RLE text
well formed with runs that cover exactly height × width pixels (`ifcn.data.rle`). Anything else
is refused with one line naming the file and the image; proposals of another image set than
the JSON a stage reads with them, by `check_image_sets`. This module must not import torch
(`ifcn evaluate` imports it and its start-up time counts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ifcn
from ifcn.data.rle import RunStats, rle_text_faults, run_stats
from ifcn.errors import IfcnError
from ifcn.proposals.table import Column, TableReader, TableWriter
from ifcn.provenance import run_provenance

FORMAT = "ifcn-proposals"
FORMAT_VERSION = 1
# Root attributes the producer must supply; the writer adds format, format_version and the
# provenance: ifcn_version, commit, versions (JSON), created.
REQUIRED_ATTRS = ("config", "checkpoint_sha256", "dataset", "scales", "k", "m")
COLUMNS = {
    "proposals": {
        "score": Column("float32"),
        "box": Column("float32", (4,)),
        "rle": Column("text"),
        "scale": Column("int8"),
    }
}
_BLOCK_BYTES = 1 << 25  # padded RLE bytes that `iter_images` reads at once


@dataclass
class ImageProposals:
    """One image's proposals, best first: what `ProposalWriter.add` takes and the reader returns."""

    image_id: int
    file_name: str
    height: int
    width: int
    scores: np.ndarray  # (n,) float32, non-increasing
    boxes: np.ndarray  # (n, 4) float32, x0 y0 x1 y1 in original-image pixels
    rles: list[bytes]  # COCO compressed RLE counts, each of size (height, width)
    scales: np.ndarray  # (n,) int8, index into the file's `scales` attribute

    def __len__(self) -> int:
        return len(self.scores)

    def coco_rles(self) -> list[dict]:
        """The masks as pycocotools RLE objects (`{"size": [h, w], "counts": bytes}`)."""
        size = [self.height, self.width]
        return [{"size": size, "counts": counts} for counts in self.rles]


def check_image(
    image_id: int,
    height: int,
    width: int,
    scores: np.ndarray,
    boxes: np.ndarray,
    rles: Sequence[bytes],
    scales: np.ndarray,
    num_scales: int,
    path: Path,
) -> RunStats:
    """Raise an IfcnError naming `path` and the image unless its proposals follow the format;
    return what summing the masks' runs found (`ifcn.data.rle.RunStats`)."""
    where = f"image {image_id}"
    if len(boxes) != len(scores) or len(rles) != len(scores) or len(scales) != len(scores):
        raise IfcnError(
            f"{where}: {len(scores)} scores but {len(boxes)} boxes, {len(rles)} RLEs, "
            f"{len(scales)} scales",
            path,
        )
    if not len(scores):
        return run_stats([])
    if not np.isfinite(scores).all():
        raise IfcnError(f"{where}: scores hold NaN or infinity", path)
    if (np.diff(scores) > 0).any():
        row = int(np.flatnonzero(np.diff(scores) > 0)[0]) + 1
        raise IfcnError(
            f"{where}: scores are not in descending order (row {row} of the image: "
            f"{float(scores[row]):.6g} after {float(scores[row - 1]):.6g})",
            path,
        )
    if not np.isfinite(boxes).all():
        raise IfcnError(f"{where}: boxes hold NaN or infinity", path)
    x0, y0, x1, y1 = boxes.T
    outside = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 < x0) | (y1 < y0)
    if outside.any():
        box = [float(v) for v in boxes[np.flatnonzero(outside)[0]]]
        raise IfcnError(f"{where}: box {box} is not inside the {width}x{height} image", path)
    if (scales < 0).any() or (scales >= num_scales).any():
        raise IfcnError(
            f"{where}: scale index outside 0..{num_scales - 1} (the scales attribute)", path
        )
    try:
        stats = run_stats(rles)  # joins the texts: anything but bytes is a TypeError
    except TypeError:
        raise IfcnError(f"{where}: RLE counts must be bytes (COCO compressed RLE)", path) from None
    wrong = np.flatnonzero(stats.covered != height * width)
    if len(wrong):
        row = int(wrong[0])
        fault = rle_text_faults([rles[row]], np.array([height * width]))[0]
        fault = fault or f"RLE runs cover {int(stats.covered[row])} pixels"  # (they agree)
        raise IfcnError(f"{where}: the mask of row {row}: {fault} ({width}x{height})", path)
    return stats


class ProposalWriter:
    """Streams images' proposals into proposals.h5; the file appears only when `close` succeeds.

    Use as a context manager: a clean exit writes the image table and renames the temporary file
    into place; an exception removes it. Every image is checked (`check_image`) before it is
    added.
    """

    def __init__(self, path: str | Path, attrs: Mapping[str, Any]):
        self.path = Path(path)
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise IfcnError(f"proposal file attributes missing: {', '.join(missing)}", self.path)
        none = [key for key, value in attrs.items() if value is None]
        if none:
            raise IfcnError(f"proposal file attributes are None: {', '.join(none)}", self.path)
        self._num_scales = len(np.atleast_1d(attrs["scales"]))
        provenance = run_provenance()
        self._table = TableWriter(
            self.path,
            {
                "ifcn_version": ifcn.__version__,
                "commit": provenance["commit"],
                "versions": json.dumps(provenance["versions"], sort_keys=True),
                "created": provenance["created"],
                **attrs,
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
            },
            COLUMNS,
        )

    def __enter__(self) -> ProposalWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(
        self,
        image_id: int,
        file_name: str,
        height: int,
        width: int,
        scores: np.ndarray,
        boxes: np.ndarray,
        rles: Sequence[bytes],
        scales: np.ndarray,
    ) -> None:
        """Append one image (possibly with no proposals); rows must be best first."""
        if int(height) <= 0 or int(width) <= 0:
            raise IfcnError(f"image {image_id}: size {height}x{width} is not positive", self.path)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scales = np.asarray(scales).reshape(-1)
        rles = list(rles)
        check_image(int(image_id), int(height), int(width), scores, boxes, rles, scales,
                    self._num_scales, self.path)  # fmt: skip
        image = {"id": int(image_id), "file_name": str(file_name), "height": int(height),
                 "width": int(width)}  # fmt: skip
        rows = {"score": scores, "box": boxes, "rle": rles, "scale": scales.astype(np.int8)}
        self._table.add(image, {"proposals": rows})

    def close(self) -> None:
        """Write the image table and attributes, then rename the file into place."""
        self._table.close()

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._table.abort()


def write_proposals(
    path: str | Path, records: Iterable[ImageProposals | Mapping[str, Any]], attrs: Mapping
) -> None:
    """Write a whole proposals.h5 from `ImageProposals` (or mappings of `add`'s arguments)."""
    with ProposalWriter(path, attrs) as writer:
        for record in records:
            fields = record.__dict__ if isinstance(record, ImageProposals) else record
            writer.add(**fields)


class Proposals:
    """Reader of proposals.h5: the image table in memory, one image's rows on demand.

    `Proposals(path)[image_id]` (or `get`) returns an `ImageProposals`; the per-column accessors
    (`scores`, `boxes`, `rles`, `scales`, `masks`) return one column. Every accessor takes
    `top_n` to keep only the best n, and checks the whole image first (`check_image`), so a file
    whose scores are out of order is refused rather than cut at the wrong rows. Iterating reads
    in large sequential blocks.

    Every mask's runs are summed as pycocotools reads them (`ifcn.data.rle.run_totals`), also
    for a reader that only hands the RLEs to pycocotools' IoU: on runs that do not add up to
    the image, its IoU loops forever and its decoding returns uninitialised memory.
    """

    def __init__(self, path: str | Path):
        self._table = TableReader(path, "proposals", FORMAT, (FORMAT_VERSION,), COLUMNS)
        self.path = self._table.path
        try:
            self._num_scales = len(np.atleast_1d(self._table.attrs.get("scales", [])))
        except BaseException:
            self._table.close()
            raise
        self._offset = self._table.offsets["proposals"]

    def __enter__(self) -> Proposals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._table.close()

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._table.row

    @property
    def image_ids(self) -> np.ndarray:
        """Image ids in file order."""
        return self._table.image_ids.copy()

    @property
    def heights(self) -> np.ndarray:
        return self._table.heights.copy()

    @property
    def widths(self) -> np.ndarray:
        return self._table.widths.copy()

    @property
    def counts(self) -> np.ndarray:
        """Number of proposals of each image, in file order."""
        return np.diff(self._offset)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes as Python values; `config` parsed from its JSON."""
        return self._table.attrs

    @property
    def file_names(self) -> list[str]:
        """Image file names in file order."""
        return list(self._table.file_names)

    def size(self, image_id: int) -> tuple[int, int]:
        n = self._table.index(image_id)
        return int(self._table.heights[n]), int(self._table.widths[n])

    def file_name(self, image_id: int) -> str:
        return self._table.file_names[self._table.index(image_id)]

    def get(self, image_id: int, top_n: int | None = None) -> ImageProposals:
        """One image's proposals (the best `top_n`), checked."""
        n = self._table.index(image_id)
        lo, hi = int(self._offset[n]), int(self._offset[n + 1])
        return self._record(n, self._table.read("proposals", lo, hi), lo, top_n)[0]

    __getitem__ = get

    def scores(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        return self.get(image_id, top_n).scores

    def boxes(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        return self.get(image_id, top_n).boxes

    def scales(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        return self.get(image_id, top_n).scales

    def rles(self, image_id: int, top_n: int | None = None) -> list[dict]:
        """pycocotools RLE objects (`{"size": [h, w], "counts": bytes}`) of the image's masks."""
        return self.get(image_id, top_n).coco_rles()

    def masks(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        """Decoded binary masks, (n, height, width) uint8."""
        from pycocotools import mask as mask_utils

        record = self.get(image_id, top_n)
        rles = record.coco_rles()
        if not rles:
            return np.zeros((0, *self.size(image_id)), dtype=np.uint8)
        return np.moveaxis(mask_utils.decode(rles), 2, 0)

    def _record(
        self, n: int, block: dict, base: int, top_n: int | None
    ) -> tuple[ImageProposals, RunStats]:
        """Image n's proposals from a block of rows starting at row `base`, checked, and what
        summing their masks' runs found."""
        lo, hi = int(self._offset[n]) - base, int(self._offset[n + 1]) - base
        record = ImageProposals(
            image_id=int(self._table.image_ids[n]),
            file_name=self._table.file_names[n],
            height=int(self._table.heights[n]),
            width=int(self._table.widths[n]),
            scores=block["score"][lo:hi],
            boxes=block["box"][lo:hi],
            rles=block["rle"][lo:hi],
            scales=block["scale"][lo:hi],
        )
        masks = check_image(
            record.image_id, record.height, record.width, record.scores, record.boxes,
            record.rles, record.scales, self._num_scales, self.path,
        )  # fmt: skip
        if top_n is not None:
            keep = max(int(top_n), 0)
            record.scores, record.boxes = record.scores[:keep], record.boxes[:keep]
            record.rles, record.scales = record.rles[:keep], record.scales[:keep]
            masks = masks.take(slice(0, keep))
        return record, masks

    def iter_images(
        self, image_ids: Iterable[int] | None = None, top_n: int | None = None
    ) -> Iterator[ImageProposals]:
        """The given images (all by default) in file order, read in large sequential blocks."""
        for record, _ in self.iter_checked(image_ids, top_n):
            yield record

    def iter_checked(
        self, image_ids: Iterable[int] | None = None, top_n: int | None = None
    ) -> Iterator[tuple[ImageProposals, RunStats]]:
        """`iter_images`, each image with what summing its masks' runs found (their areas and
        columns, which evaluation uses to leave pairs out of the IoUs)."""
        if image_ids is None:
            order = np.arange(len(self))
        else:
            order = np.sort([self._table.index(i) for i in image_ids]).astype(np.int64)
        width = self._table.row_bytes("proposals", "rle")
        block_rows = max(1, _BLOCK_BYTES // max(width, 1))
        start = 0
        while start < len(order):
            # grow the block over images whose rows follow on, up to ~32 MiB of padded RLE text
            stop = start + 1
            lo = int(self._offset[order[start]])
            while (
                stop < len(order)
                and order[stop] == order[stop - 1] + 1
                and self._offset[order[stop] + 1] - lo <= block_rows
            ):
                stop += 1
            hi = int(self._offset[order[stop - 1] + 1])
            block = self._table.read("proposals", lo, hi)
            for n in order[start:stop]:
                yield self._record(int(n), block, lo, top_n)
            start = stop

    def __iter__(self) -> Iterator[ImageProposals]:
        return self.iter_images()


class ProposalsPerProcess:
    """A proposals.h5 opened lazily once in each process that reads it.

    DataLoader workers and evaluation's worker processes read the same file as the main
    process, and an h5py handle does not survive a fork: each process opens its own on first
    use.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._opened: tuple[int, Proposals] | None = None

    def _proposals(self) -> Proposals:
        if self._opened is None or self._opened[0] != os.getpid():
            self._opened = (os.getpid(), Proposals(self.path))
        return self._opened[1]

    def get(self, image_id: int, top_n: int | None = None) -> ImageProposals:
        return self._proposals().get(image_id, top_n=top_n)

    def iter_checked(
        self, image_ids: Iterable[int], top_n: int | None = None
    ) -> Iterator[tuple[ImageProposals, RunStats]]:
        """`Proposals.iter_checked`: the images in file order, read in large blocks."""
        return self._proposals().iter_checked(image_ids, top_n)

    def close(self) -> None:
        """Close this process's handle."""
        if self._opened is not None:
            self._opened[1].close()
            self._opened = None


def check_image_sets(
    proposals: Proposals, images: Mapping[int, dict], json_path: str | Path
) -> None:
    """Refuse proposals of another image set: every image of an image table (`images`, read
    from `json_path`) must be in the file, with the same size and file name."""
    missing = [i for i in images if i not in proposals]
    if missing:
        raise IfcnError(
            f"no proposals for {len(missing)} of the {len(images)} images of {json_path} "
            f"(e.g. id {missing[0]}): proposals of another image set?",
            proposals.path,
        )
    for image_id, entry in images.items():
        size = proposals.size(image_id)
        name = proposals.file_name(image_id)
        if size != (int(entry["height"]), int(entry["width"])) or name != entry["file_name"]:
            raise IfcnError(
                f"image {image_id} is {name} ({size[0]}x{size[1]}) here but "
                f"{entry['file_name']} ({entry['height']}x{entry['width']}) in {json_path}: "
                "proposals of another image set?",
                proposals.path,
            )
