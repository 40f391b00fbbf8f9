"""proposals.h5, the public proposal file (DESIGN §7): a streaming writer, a random-access reader.

The file is columnar: one row per proposal in `/proposals/*`, one row per image in `/images/*`,
and `/images/offset` says which proposal rows belong to which image, so one image is a slice and
the whole file is a handful of bulk reads. `/proposals/rle` holds COCO compressed RLE counts as
fixed-length byte strings padded with NULs to the longest one in the file: HDF5 compresses only
fixed-size data (variable-length strings live uncompressed in a heap), and the RLE text is most of
the file. Readers get plain `bytes` back (NumPy strips the padding; RLE text never holds a NUL).

Writing goes to a temporary name in the target directory and ends with `os.replace`, so a crash
never leaves a file that looks complete. This module must not import torch (`ifcn evaluate`
imports it and its start-up time counts).
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import ifcn
from ifcn.errors import IfcnError

FORMAT = "ifcn-proposals"
FORMAT_VERSION = 1
# Root attributes the producer must supply; the writer adds format, version, ifcn_version, created.
REQUIRED_ATTRS = ("config", "checkpoint_sha256", "dataset", "scales", "k", "m")

_GZIP_LEVEL = 1  # level 1 compresses RLE text ~5x at a fraction of the default level's time
_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: one image is one or two chunks, a full read is sequential
_BLOCK_BYTES = 1 << 25  # padded RLE bytes that `iter_images` reads at once
_FLUSH_ROWS = 1 << 16  # proposals buffered by the writer before they go to the file
_NUMERIC_CHUNK_ROWS = 1 << 14  # score, box and scale columns
_THREADS = min(4, os.cpu_count() or 1)  # threads deflating the RLE column


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


def _attr_value(value: Any) -> Any:
    """An attribute as HDF5 stores it: dicts as JSON text, sequences as arrays."""
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def _chunk_rows(row_bytes: int, rows: int) -> int:
    return max(1, min(max(rows, 1), _CHUNK_BYTES // max(row_bytes, 1)))


class ProposalWriter:
    """Streams images' proposals into proposals.h5; the file appears only when `close` succeeds.

    Use as a context manager: a clean exit writes the image table and renames the temporary file
    into place; an exception removes it. Proposal columns are flushed every ~65k rows, so memory
    stays bounded for 5k images x 1000 proposals; RLE text waits in an anonymous scratch file
    until the longest one is known and the fixed-width column can be written.
    """

    def __init__(self, path: str | Path, attrs: Mapping[str, Any]):
        self.path = Path(path)
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise IfcnError(f"proposal file attributes missing: {', '.join(missing)}", self.path)
        none = [key for key, value in attrs.items() if value is None]
        if none:
            raise IfcnError(f"proposal file attributes are None: {', '.join(none)}", self.path)
        self._attrs = {
            "ifcn_version": ifcn.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{key: _attr_value(value) for key, value in attrs.items()},
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
        }
        self._num_scales = len(np.atleast_1d(self._attrs["scales"]))
        if not self.path.parent.is_dir():
            raise IfcnError("output directory does not exist", self.path.parent)
        prefix = f".{self.path.name}."
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=prefix, suffix=".tmp")
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._scratch = tempfile.TemporaryFile(dir=self.path.parent)
            self._file = h5py.File(self._tmp, "w")
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        group = self._file.create_group("proposals")
        columns = {"score": ((), np.float32), "box": ((4,), np.float32), "scale": ((), np.int8)}
        self._columns = {}
        for name, (shape, dtype) in columns.items():
            self._columns[name] = group.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(_NUMERIC_CHUNK_ROWS, *shape),
                compression="gzip", compression_opts=_GZIP_LEVEL, shuffle=True,
            )  # fmt: skip
        self._images: dict[str, list] = {"id": [], "file_name": [], "height": [], "width": []}
        self._seen: set[int] = set()
        self._counts: list[int] = []
        self._rle_lengths: list[np.ndarray] = []
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in self._columns}
        self._buffered = 0
        self._written = 0
        self._open = True

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
        if not self._open:
            raise IfcnError("writer is closed", self.path)
        where = f"image {image_id}"
        image_id = int(image_id)
        if image_id in self._seen:
            raise IfcnError(f"{where} added twice", self.path)
        if int(height) <= 0 or int(width) <= 0:
            raise IfcnError(f"{where}: size {height}x{width} is not positive", self.path)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        n = len(scores)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scales = np.asarray(scales).reshape(-1)
        if len(boxes) != n or len(rles) != n or len(scales) != n:
            raise IfcnError(
                f"{where}: {n} scores but {len(boxes)} boxes, {len(rles)} RLEs, "
                f"{len(scales)} scales",
                self.path,
            )
        if not np.isfinite(scores).all():
            raise IfcnError(f"{where}: scores hold NaN or infinity", self.path)
        if n > 1 and (np.diff(scores) > 0).any():
            raise IfcnError(f"{where}: scores are not in descending order", self.path)
        if n and (scales.min() < 0 or scales.max() >= self._num_scales):
            raise IfcnError(
                f"{where}: scale index outside 0..{self._num_scales - 1} (the scales attribute)",
                self.path,
            )
        try:
            text = b"".join(rles)
        except TypeError:
            message = f"{where}: RLE counts must be bytes (COCO compressed RLE)"
            raise IfcnError(message, self.path) from None
        self._seen.add(image_id)
        self._images["id"].append(image_id)
        self._images["file_name"].append(str(file_name))
        self._images["height"].append(int(height))
        self._images["width"].append(int(width))
        self._counts.append(n)
        if not n:
            return
        self._buffer["score"].append(scores)
        self._buffer["box"].append(boxes)
        self._buffer["scale"].append(scales.astype(np.int8))
        self._rle_lengths.append(np.fromiter(map(len, rles), dtype=np.int64, count=n))
        self._scratch.write(text)
        self._buffered += n
        if self._buffered >= _FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        end = self._written + self._buffered
        for name, column in self._columns.items():
            column.resize(end, axis=0)
            column[self._written : end] = np.concatenate(self._buffer[name])
            self._buffer[name].clear()
        self._written = end
        self._buffered = 0

    def _write_rles(self, group: h5py.Group) -> None:
        """Copy the scratch RLE text into the fixed-width `rle` column.

        Each chunk is padded and deflated here, in threads (zlib releases the GIL), and stored
        with `write_direct_chunk`: the bytes are exactly what HDF5's gzip filter would store, at
        a fraction of the wall time, since compressing the padded text dominates writing.
        """
        lengths = np.concatenate(self._rle_lengths) if self._rle_lengths else np.zeros(0, int)
        width = int(lengths.max()) if len(lengths) else 1
        rows = _chunk_rows(width, len(lengths))
        column = group.create_dataset(
            "rle", shape=(len(lengths),), dtype=f"S{width}", chunks=(rows,),
            compression="gzip", compression_opts=_GZIP_LEVEL,
        )  # fmt: skip
        columns = np.arange(width)

        def deflate(lens: np.ndarray, text: bytes) -> bytes:
            padded = np.zeros((rows, width), dtype=np.uint8)  # HDF5 stores edge chunks whole
            padded[: len(lens)][columns < lens[:, None]] = np.frombuffer(text, dtype=np.uint8)
            return zlib.compress(padded, _GZIP_LEVEL)

        self._scratch.seek(0)
        starts = range(0, len(lengths), rows)
        with ThreadPoolExecutor(_THREADS) as pool:
            for batch in range(0, len(starts), 4 * _THREADS):
                firsts = starts[batch : batch + 4 * _THREADS]
                chunks = [lengths[lo : lo + rows] for lo in firsts]
                texts = [self._scratch.read(int(lens.sum())) for lens in chunks]
                for lo, data in zip(firsts, pool.map(deflate, chunks, texts), strict=True):
                    column.id.write_direct_chunk((lo,), data)

    def close(self) -> None:
        """Write the image table and attributes, then rename the file into place."""
        if not self._open:
            return
        try:
            self._flush()
            self._write_rles(self._file["proposals"])
            images = self._file.create_group("images")
            num = len(self._counts)
            rows = _chunk_rows(8, num)
            opts = {"chunks": (rows,), "compression": "gzip", "compression_opts": _GZIP_LEVEL}
            images.create_dataset("id", data=np.asarray(self._images["id"], np.int64), **opts)
            images.create_dataset(
                "file_name", data=self._images["file_name"], dtype=h5py.string_dtype(), **opts
            )
            for name in ("height", "width"):
                images.create_dataset(name, data=np.asarray(self._images[name], np.int32), **opts)
            offset = np.concatenate([[0], np.cumsum(self._counts, dtype=np.int64)])
            images.create_dataset(
                "offset", data=offset, chunks=(_chunk_rows(8, num + 1),),
                compression="gzip", compression_opts=_GZIP_LEVEL,
            )  # fmt: skip
            self._file.attrs.update(self._attrs)
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        finally:
            self._scratch.close()
            self._open = False

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._open = False
        self._file.close()
        self._scratch.close()
        self._tmp.unlink(missing_ok=True)


def write_proposals(
    path: str | Path, records: Iterable[ImageProposals | Mapping[str, Any]], attrs: Mapping
) -> None:
    """Write a whole proposals.h5 from `ImageProposals` (or mappings of `add`'s arguments)."""
    with ProposalWriter(path, attrs) as writer:
        for record in records:
            fields = record.__dict__ if isinstance(record, ImageProposals) else record
            writer.add(**fields)


def _python(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def index_images(
    ids: np.ndarray, offset: np.ndarray, columns: Sequence, path: Path, kind: str
) -> dict[int, int]:
    """Check the flat layout (offsets vs. column lengths, unique ids); map image id -> row.

    Shared by proposals.h5 and the internal candidates.h5, which use the same layout.
    """
    rows = len(columns[0])
    if (
        len(offset) != len(ids) + 1
        or offset[0] != 0
        or offset[-1] != rows
        or (np.diff(offset) < 0).any()
        or any(len(column) != rows for column in columns)
    ):
        raise IfcnError(f"inconsistent {kind} file (offsets vs. column lengths)", path)
    row = {int(i): n for n, i in enumerate(ids)}
    if len(row) != len(ids):
        raise IfcnError(f"{kind} file lists an image id twice", path)
    return row


class Proposals:
    """Reader of proposals.h5: the image table in memory, one image's rows on demand.

    `Proposals(path)[image_id]` (or `get`) returns an `ImageProposals`; the per-column accessors
    (`scores`, `boxes`, `rles`, `scales`, `masks`) read only what they return. Every accessor
    takes `top_n` to keep only the best n. Iterating reads in large sequential blocks.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise IfcnError("no such file", self.path) from None
        except OSError as exc:
            raise IfcnError(f"not a readable HDF5 file ({exc})", self.path) from None
        try:
            self._check_and_index()
        except BaseException:
            self._file.close()
            raise

    def _check_and_index(self) -> None:
        attrs = self._file.attrs
        fmt = _python(attrs.get("format"))
        if fmt != FORMAT:
            raise IfcnError(f"not an ifcn proposals file (format attribute is {fmt!r})", self.path)
        version = _python(attrs.get("format_version"))
        if version != FORMAT_VERSION:
            raise IfcnError(
                f"proposals format_version {version!r}; this ifcn reads version {FORMAT_VERSION}",
                self.path,
            )
        try:
            images, proposals = self._file["images"], self._file["proposals"]
            self._ids = images["id"][:].astype(np.int64)
            self._names = images["file_name"].asstr()[:]
            self._heights = images["height"][:].astype(np.int64)
            self._widths = images["width"][:].astype(np.int64)
            self._offset = images["offset"][:].astype(np.int64)
            self._score, self._box = proposals["score"], proposals["box"]
            self._rle, self._scale = proposals["rle"], proposals["scale"]
        except KeyError as exc:
            raise IfcnError(f"proposals file lacks a column ({exc})", self.path) from None
        columns = (self._score, self._box, self._rle, self._scale)
        self._row = index_images(self._ids, self._offset, columns, self.path, "proposals")

    def __enter__(self) -> Proposals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    @property
    def image_ids(self) -> np.ndarray:
        """Image ids in file order."""
        return self._ids.copy()

    @property
    def heights(self) -> np.ndarray:
        return self._heights.copy()

    @property
    def widths(self) -> np.ndarray:
        return self._widths.copy()

    @property
    def counts(self) -> np.ndarray:
        """Number of proposals of each image, in file order."""
        return np.diff(self._offset)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes as Python values; `config` parsed from its JSON."""
        out = {key: _python(value) for key, value in self._file.attrs.items()}
        if isinstance(out.get("config"), str):
            try:
                out["config"] = json.loads(out["config"])
            except json.JSONDecodeError:
                pass
        return out

    def _rows(self, image_id: int, top_n: int | None) -> tuple[int, int, int]:
        try:
            n = self._row[int(image_id)]
        except KeyError:
            raise IfcnError(f"no image {image_id} in the proposals file", self.path) from None
        lo, hi = int(self._offset[n]), int(self._offset[n + 1])
        return n, lo, hi if top_n is None else min(hi, lo + max(int(top_n), 0))

    def size(self, image_id: int) -> tuple[int, int]:
        n = self._rows(image_id, 0)[0]
        return int(self._heights[n]), int(self._widths[n])

    def file_name(self, image_id: int) -> str:
        return str(self._names[self._rows(image_id, 0)[0]])

    def _read(self, column: h5py.Dataset, lo: int, hi: int) -> np.ndarray:
        try:
            return column[lo:hi]
        except OSError as exc:  # a damaged chunk
            message = f"cannot read {column.name} rows {lo}:{hi} ({exc})"
            raise IfcnError(message, self.path) from None

    def scores(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        _, lo, hi = self._rows(image_id, top_n)
        return self._read(self._score, lo, hi)

    def boxes(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        _, lo, hi = self._rows(image_id, top_n)
        return self._read(self._box, lo, hi)

    def scales(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        _, lo, hi = self._rows(image_id, top_n)
        return self._read(self._scale, lo, hi)

    def rles(self, image_id: int, top_n: int | None = None) -> list[dict]:
        """pycocotools RLE objects (`{"size": [h, w], "counts": bytes}`) of the image's masks."""
        n, lo, hi = self._rows(image_id, top_n)
        size = [int(self._heights[n]), int(self._widths[n])]
        return [{"size": size, "counts": c} for c in self._read(self._rle, lo, hi).tolist()]

    def masks(self, image_id: int, top_n: int | None = None) -> np.ndarray:
        """Decoded binary masks, (n, height, width) uint8."""
        from pycocotools import mask as mask_utils

        rles = self.rles(image_id, top_n)
        if not rles:
            return np.zeros((0, *self.size(image_id)), dtype=np.uint8)
        return np.moveaxis(mask_utils.decode(rles), 2, 0)

    def get(self, image_id: int, top_n: int | None = None) -> ImageProposals:
        n, lo, hi = self._rows(image_id, top_n)
        return self._record(n, lo, hi, self._read_block(lo, hi), lo)

    __getitem__ = get

    def _read_block(self, lo: int, hi: int) -> dict[str, Any]:
        return {
            "score": self._read(self._score, lo, hi),
            "box": self._read(self._box, lo, hi),
            "scale": self._read(self._scale, lo, hi),
            "rle": self._read(self._rle, lo, hi).tolist(),
        }

    def _record(self, n: int, lo: int, hi: int, block: dict, base: int) -> ImageProposals:
        a, b = lo - base, hi - base
        return ImageProposals(
            image_id=int(self._ids[n]),
            file_name=str(self._names[n]),
            height=int(self._heights[n]),
            width=int(self._widths[n]),
            scores=block["score"][a:b],
            boxes=block["box"][a:b],
            rles=block["rle"][a:b],
            scales=block["scale"][a:b],
        )

    def iter_images(
        self, image_ids: Iterable[int] | None = None, top_n: int | None = None
    ) -> Iterator[ImageProposals]:
        """The given images (all by default) in file order, read in large sequential blocks."""
        if image_ids is None:
            order = np.arange(len(self._ids))
        else:
            order = np.sort([self._rows(i, 0)[0] for i in image_ids]).astype(np.int64)
        block_rows = max(1, _BLOCK_BYTES // self._rle.dtype.itemsize)
        start = 0
        while start < len(order):
            # grow the block over images whose rows follow on, up to ~32 MiB of padded RLE text
            stop = start + 1
            lo = self._offset[order[start]]
            while (
                stop < len(order)
                and order[stop] == order[stop - 1] + 1
                and self._offset[order[stop] + 1] - lo <= block_rows
            ):
                stop += 1
            hi = int(self._offset[order[stop - 1] + 1])
            block = self._read_block(int(lo), hi)
            for n in order[start:stop]:
                a, b = int(self._offset[n]), int(self._offset[n + 1])
                if top_n is not None:
                    b = min(b, a + max(int(top_n), 0))
                yield self._record(int(n), a, b, block, int(lo))
            start = stop

    def __iter__(self) -> Iterator[ImageProposals]:
        return self.iter_images()
