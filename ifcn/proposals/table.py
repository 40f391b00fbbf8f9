"""The per-image ragged table that both HDF5 files of the proposal chain are (DESIGN §7).

One row per image in `/images/*` (id, file_name, height, width, plus the per-image columns a
format adds) and one or more *row groups*: equally long columns `/<group>/<column>` whose rows
belong to images by an offset column in `/images` (`offset` for the first group, `<group>_offset`
for the others): image i owns rows offset[i]:offset[i+1]. proposals.h5 has one group
(`proposals`), candidates.h5 two (`candidates`, the windows, and `cells`, the score maps).

This module owns everything the two formats share: the writer (rows buffered and appended to
resizable chunked columns, in a temporary file renamed into place on close and removed on any
failure, a full disk included), the reader (format and version checked, the image table and
offsets validated on open, one image's rows on demand, a text column's chunks inflated by
ISA-L as the writer deflated them, damage an IfcnError naming the file), and the coding of
attributes. The formats declare their columns and check their values.
It must not import torch (`ifcn evaluate` imports it and its start-up time counts).

A file is input from anyone, so the reader trusts no size it declares: every dataset it reads
is reached through hard links only (a soft link may loop, an external link would make ifcn
open another file) and stored in the file itself (no external or virtual storage), and its
declared size must fit what the file stores of it (`stored_dataset`) before anything is
allocated for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from isal import isal_zlib

from ifcn.atomic import temporary_path, write_error
from ifcn.cpus import available_cpus
from ifcn.errors import IfcnError

IMAGE_FIELDS = ("id", "file_name", "height", "width")
MAX_SIDE = 1 << 20  # image sides beyond this are not images but damage
_GZIP = 1  # level 1: most of the gain at a fraction of the default level's time
_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: an image is a chunk or two, a full read is sequential
_FLUSH_BYTES = 1 << 26  # rows buffered before they go to the file
_THREADS = min(4, available_cpus())  # threads deflating a text column
# Deflate codes at most 258 bytes in a 2-bit symbol: no stream of it inflates more than 1032
# times its size, and HDF5's shuffle and fletcher32 filters do not shrink data. A dataset that
# declares more than this many times what the file stores of it is refused before it is read.
MAX_COMPRESSION = 1032
_VLEN_ROW_BYTES = 256  # a guess at a variable-length text row's size in memory, for block reads


@dataclass(frozen=True)
class Column:
    """A column of a row group: per-row `shape` and `dtype` ("text": bytes of any length,
    stored NUL-padded to the longest, which HDF5 can compress, unlike variable-length data)."""

    dtype: str
    shape: tuple[int, ...] = ()
    compress: bool = True

    @property
    def chunk_rows(self) -> int:
        """~256 KiB chunks (at most 16384 rows): one image is a chunk or a few."""
        return max(1, min(1 << 14, (1 << 18) // max(self.row_bytes(), 1)))

    @property
    def text(self) -> bool:
        return self.dtype == "text"

    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


Groups = Mapping[str, Mapping[str, Column]]


def offset_name(groups: Groups, group: str) -> str:
    """The /images column holding a group's offsets."""
    return "offset" if group == next(iter(groups)) else f"{group}_offset"


def _chunk_rows(row_bytes: int, rows: int) -> int:
    return max(1, min(max(rows, 1), _CHUNK_BYTES // max(row_bytes, 1)))


def attr_value(value: Any) -> Any:
    """An attribute as HDF5 stores it: mappings as JSON text, sequences as arrays."""
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def python_value(value: Any) -> Any:
    """An attribute read back as a plain Python value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


class TableWriter:
    """Streams images and their rows into a new file; it appears at `path` only on `close`.

    `groups` maps each row group to its columns, `image_columns` declares per-image columns
    beyond id, file_name, height and width (shape per image). Use as a context manager: an
    exception inside the block (or in `close`) removes the temporary file and leaves `path`
    untouched; an OSError while writing becomes an IfcnError naming `path`.
    """

    def __init__(
        self,
        path: str | Path,
        attrs: Mapping[str, Any],
        groups: Groups,
        image_columns: Mapping[str, Column] | None = None,
    ):
        self.path = Path(path)
        self.groups = {name: dict(columns) for name, columns in groups.items()}
        self.image_columns = dict(image_columns or {})
        self._attrs = {key: attr_value(value) for key, value in attrs.items()}
        self._created: list[Path] = []  # the temporary, named before it exists
        self._file = None
        self._scratch: dict[str, Any] = {}
        try:
            self._tmp = temporary_path(self.path, self._created)
            # No chunk cache, and a flush after every write: a full disk then fails the write
            # itself, and HDF5 keeps no dirty data that it would try to flush again on closing
            # or at exit (where it crashes the process).
            self._file = h5py.File(self._tmp, "w", rdcc_nbytes=0)
            self._datasets: dict[tuple[str, str], h5py.Dataset] = {}
            for group, columns in self.groups.items():
                handle = self._file.create_group(group)
                for name, column in columns.items():
                    if column.text:
                        scratch = tempfile.TemporaryFile(dir=self.path.parent)
                        self._scratch[f"{group}/{name}"] = scratch
                        continue
                    rows = column.chunk_rows
                    compression = {"compression": "gzip", "compression_opts": _GZIP,
                                   "shuffle": True} if column.compress else {}  # fmt: skip
                    self._datasets[group, name] = handle.create_dataset(
                        name, shape=(0, *column.shape), maxshape=(None, *column.shape),
                        dtype=column.dtype, chunks=(rows, *column.shape), **compression,
                    )  # fmt: skip
        except OSError as exc:
            self.abort()
            raise write_error(exc, self.path) from None
        except BaseException:
            self.abort()
            raise
        self._images: dict[str, list] = {key: [] for key in (*IMAGE_FIELDS, *self.image_columns)}
        self._seen: set[int] = set()
        self._counts: dict[str, list[int]] = {group: [] for group in self.groups}
        self._text_lengths: dict[str, list[np.ndarray]] = {key: [] for key in self._scratch}
        self._buffer: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in self._datasets}
        self._buffered = 0
        self._written = dict.fromkeys(self.groups, 0)
        self._open = True

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(
        self,
        image: Mapping[str, Any],
        rows: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Append one image: `image` holds id, file_name, height, width and the per-image
        columns; `rows` maps each group to its columns' rows (any number, possibly none)."""
        if not self._open:
            raise IfcnError("writer is closed", self.path)
        image_id = int(image["id"])
        if image_id in self._seen:
            raise IfcnError(f"image {image_id} added twice", self.path)
        self._seen.add(image_id)
        for key in self._images:
            self._images[key].append(image[key])
        for group, columns in self.groups.items():
            given = rows.get(group, {})
            lengths = {len(given[name]) for name in columns if name in given}
            if len(lengths) > 1 or (given and set(given) != set(columns)):
                raise IfcnError(f"image {image_id}: {group} columns of unequal length", self.path)
            count = lengths.pop() if lengths else 0
            self._counts[group].append(count)
            if not count:
                continue
            for name, column in columns.items():
                if column.text:
                    texts = given[name]
                    self._text_lengths[f"{group}/{name}"].append(
                        np.fromiter(map(len, texts), dtype=np.int64, count=count)
                    )
                    self._write_scratch(f"{group}/{name}", b"".join(texts))
                else:
                    array = np.asarray(given[name], dtype=column.dtype)
                    self._buffer[group, name].append(array.reshape(count, *column.shape))
                    self._buffered += array.nbytes
        if self._buffered >= _FLUSH_BYTES:
            self._flush()

    def _write_scratch(self, key: str, data: bytes) -> None:
        try:
            self._scratch[key].write(data)
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def _flush(self) -> None:
        try:
            for group in self.groups:
                parts = [(name, self._buffer[group, name]) for name in self.groups[group]
                         if (group, name) in self._buffer]  # fmt: skip
                if not parts or not parts[0][1]:
                    continue
                start = self._written[group]
                end = start + sum(len(a) for a in parts[0][1])
                for name, arrays in parts:
                    dataset = self._datasets[group, name]
                    dataset.resize(end, axis=0)
                    dataset[start:end] = np.concatenate(arrays)
                    arrays.clear()
                self._written[group] = end
            self._file.flush()
        except OSError as exc:
            raise write_error(exc, self.path) from None
        self._buffered = 0

    def _write_text(self, group: h5py.Group, key: str, name: str) -> None:
        """Copy a text column from its scratch file into a fixed-width column.

        Each chunk is padded and deflated here, in threads (ISA-L's deflate, a zlib stream as
        HDF5's gzip filter stores it, releases the GIL), and stored with `write_direct_chunk`:
        compressing the padded text dominates writing, and ISA-L does it several times faster
        than zlib.
        """
        lengths = self._text_lengths[key]
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        width = int(lengths.max()) if len(lengths) else 1
        rows = _chunk_rows(width, len(lengths))
        column = group.create_dataset(
            name, shape=(len(lengths),), maxshape=(None,), dtype=f"S{width}", chunks=(rows,),
            compression="gzip", compression_opts=_GZIP,
        )  # fmt: skip
        positions = np.arange(width)

        def deflate(lens: np.ndarray, text: bytes) -> bytes:
            padded = np.zeros((rows, width), dtype=np.uint8)  # HDF5 stores edge chunks whole
            padded[: len(lens)][positions < lens[:, None]] = np.frombuffer(text, dtype=np.uint8)
            return isal_zlib.compress(padded, 1)  # ISA-L level 1: smaller than zlib 1, 5x faster

        scratch = self._scratch[key]
        scratch.seek(0)
        starts = range(0, len(lengths), rows)
        with ThreadPoolExecutor(_THREADS) as pool:
            for batch in range(0, len(starts), 4 * _THREADS):
                firsts = starts[batch : batch + 4 * _THREADS]
                chunks = [lengths[lo : lo + rows] for lo in firsts]
                texts = [scratch.read(int(lens.sum())) for lens in chunks]
                for lo, data in zip(firsts, pool.map(deflate, chunks, texts), strict=True):
                    column.id.write_direct_chunk((lo,), data)

    def close(self) -> None:
        """Write the image table and attributes, then rename the file into place."""
        if not self._open:
            return
        try:
            self._flush()
            for key in self._scratch:
                group, name = key.split("/")
                self._write_text(self._file[group], key, name)
            self._write_images()
            self._file.attrs.update(self._attrs)
            self._file.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise write_error(exc, self.path) from None
        except BaseException:
            self.abort()
            raise
        finally:
            self._open = False
            self._close_scratch()

    def _write_images(self) -> None:
        images = self._file.create_group("images")
        num = len(self._images["id"])

        def store(name: str, data: Any, dtype: Any, shape: tuple = ()) -> None:
            array = np.asarray(data, dtype=dtype) if dtype is not str else data
            rows = _chunk_rows(8 * max(1, int(np.prod(shape))), len(array))
            text = {"dtype": h5py.string_dtype()} if dtype is str else {}
            images.create_dataset(
                name, data=array, maxshape=(None, *shape), chunks=(rows, *shape),
                compression="gzip", compression_opts=_GZIP, **text,
            )  # fmt: skip

        store("id", self._images["id"], np.int64)
        store("file_name", [str(f) for f in self._images["file_name"]], str)
        store("height", self._images["height"], np.int32)
        store("width", self._images["width"], np.int32)
        for name, column in self.image_columns.items():
            values = np.asarray(self._images[name], dtype=column.dtype).reshape(num, *column.shape)
            store(name, values, column.dtype, column.shape)
        for group in self.groups:
            offset = np.concatenate([[0], np.cumsum(self._counts[group], dtype=np.int64)])
            store(offset_name(self.groups, group), offset, np.int64)

    def _close_scratch(self) -> None:
        for scratch in self._scratch.values():
            with contextlib.suppress(OSError):
                scratch.close()

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched. Never raises:
        closing a file on a full disk can fail again, and the temporary must go anyway."""
        self._open = False
        try:  # the unlink even when a stop raised again (ifcn.signals) interrupts the close
            if self._file is not None:
                with contextlib.suppress(Exception):
                    self._file.close()
            self._close_scratch()
        finally:
            for tmp in self._created:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)


def _link_kind(link: object) -> str:
    if isinstance(link, h5py.SoftLink):
        return "a soft link"
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.filename}"
    return "a user-defined link"


def stored_dataset(file: h5py.File, name: str, path: Path, kind: str) -> h5py.Dataset:
    """The dataset `name` of `file`, checked before anything of it is read: reached through
    hard links only, its data stored in the file itself, and its declared size at most what
    compression can make of the bytes the file stores of it (`MAX_COMPRESSION`; all of them
    for data stored raw). A file that declares 3e9 rows and stores none is refused here rather
    than allocating gigabytes; anything else wrong is an IfcnError naming the file."""
    node: h5py.Group | h5py.Dataset = file
    reached = ""
    for part in name.split("/"):
        reached += f"/{part}"
        if not isinstance(node, h5py.Group):
            raise IfcnError(f"damaged {kind} file: {reached} lies inside a dataset", path)
        link = node.get(part, getlink=True)
        if link is None:
            raise IfcnError(f"damaged {kind} file: no {reached}", path)
        if not isinstance(link, h5py.HardLink):
            raise IfcnError(
                f"{kind} file: {reached} is {_link_kind(link)}; ifcn reads only data stored "
                "in the file itself",
                path,
            )
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        raise IfcnError(f"damaged {kind} file: {reached} is not a dataset", path)
    if node.is_virtual or node.external:
        raise IfcnError(
            f"{kind} file: the data of {reached} lie in other files (external or virtual "
            "storage); ifcn reads only data stored in the file itself",
            path,
        )
    element = node.id.get_type().get_size()  # in the file: 8 for a variable-length row
    declared = math.prod(node.shape) * element
    stored = node.id.get_storage_size()
    plist = node.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.COMPACT:  # in the object header, at most 64 KiB
        return node
    filtered = plist.get_layout() == h5py.h5d.CHUNKED and plist.get_nfilters() > 0
    if declared > stored * (MAX_COMPRESSION if filtered else 1):
        rows = node.shape[0] if node.shape else 1
        raise IfcnError(
            f"{kind} file: {reached} declares {rows} rows ({declared} bytes) but the file "
            f"stores {stored} bytes of them, less than any compression allows: damaged or "
            "forged",
            path,
        )
    return node


def is_text(dataset: h5py.Dataset) -> bool:
    """Whether h5py reads the dataset's rows as bytes: any HDF5 string type, fixed or variable
    length, ASCII or UTF-8."""
    return dataset.dtype.kind == "S" or (
        dataset.dtype.kind == "O" and h5py.check_string_dtype(dataset.dtype) is not None
    )


def describe_type(dataset: h5py.Dataset) -> str:
    """The HDF5 type of a dataset's rows in a few words (for a refusal)."""
    dtype = dataset.dtype
    if dtype.kind == "O":
        inner = h5py.check_vlen_dtype(dtype)
        if inner is not None:
            return f"variable-length sequences of {inner}"
        if h5py.check_ref_dtype(dtype) is not None:
            return "object references"
        return "objects"
    if dtype.kind == "V":
        return "compound or opaque records"
    return f"{dtype} numbers"


class TableReader:
    """Reader of a table file: format and version checked and the image table validated on
    open (ids unique, sizes positive, offsets consistent with every column of their group),
    rows read on demand. Anything wrong is an IfcnError naming the file.
    """

    def __init__(
        self,
        path: str | Path,
        kind: str,
        fmt: str,
        versions: Sequence[int],
        groups: Groups | Callable[[dict], Groups],
        image_columns: Mapping[str, Column] | Callable[[dict], Mapping[str, Column]] = (),
    ):
        """`groups` and `image_columns` may be functions of the root attributes, for formats
        whose columns depend on them."""
        self.path, self.kind = Path(path), kind
        self._attrs: dict[str, Any] | None = None
        if self.path.is_dir():
            raise IfcnError(f"is a folder, not a {kind} file", self.path)
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise IfcnError(f"{kind} file not found", self.path) from None
        except OSError as exc:
            raise IfcnError(f"not a readable {kind} file (truncated or not HDF5: {exc})",
                            self.path) from None  # fmt: skip
        try:
            self._open(fmt, versions, groups, image_columns)
        except BaseException:
            self._file.close()
            raise

    def _open(self, fmt: str, versions: Sequence[int], groups, image_columns) -> None:
        found = python_value(self._file.attrs.get("format"))
        if found != fmt:
            raise IfcnError(f"not an ifcn {self.kind} file (format attribute {found!r})",
                            self.path)  # fmt: skip
        self.version = python_value(self._file.attrs.get("format_version"))
        if self.version not in versions:
            known = ", ".join(map(str, versions))
            raise IfcnError(
                f"{self.kind} format_version {self.version!r}; this ifcn reads {known}", self.path
            )
        attrs = self.attrs
        try:
            groups = groups(attrs) if callable(groups) else groups
            image_columns = dict(image_columns(attrs) if callable(image_columns) else image_columns)
        except (KeyError, TypeError, ValueError) as exc:
            raise IfcnError(
                f"{self.kind} file lacks a sound attribute ({exc!r})", self.path
            ) from None
        self.groups = {name: dict(columns) for name, columns in groups.items()}
        self.columns = {
            (group, name): self._dataset(f"{group}/{name}")
            for group, columns in self.groups.items()
            for name in columns
        }
        try:
            ids = self._dataset("images/id")[:]
            names = self._dataset("images/file_name")[:]
            heights, widths = self._dataset("images/height")[:], self._dataset("images/width")[:]
            self.offsets = {
                g: self._dataset(f"images/{offset_name(self.groups, g)}")[:] for g in self.groups
            }
            self.image_values = {name: self._dataset(f"images/{name}")[:] for name in image_columns}
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            raise IfcnError(f"damaged {self.kind} file: {exc}", self.path) from None
        num = len(ids)
        if any(a.dtype.kind not in "iu" or a.ndim != 1 for a in (ids, heights, widths)):
            raise IfcnError("image ids, heights and widths must be integers", self.path)
        if names.dtype.kind not in "OS" or not len(names) == len(heights) == len(widths) == num:
            raise IfcnError("damaged image table (file names, or columns of unequal length)",
                            self.path)  # fmt: skip
        self.image_ids, self.heights, self.widths = (
            a.astype(np.int64) for a in (ids, heights, widths)
        )
        sides = np.concatenate([self.heights, self.widths]).reshape(2, -1)
        bad = ((sides < 1) | (sides > MAX_SIDE)).any(axis=0)
        if bad.any():
            n = int(np.flatnonzero(bad)[0])
            raise IfcnError(
                f"image {int(self.image_ids[n])}: size {int(self.heights[n])}x"
                f"{int(self.widths[n])} is not an image's",
                self.path,
            )
        try:
            self.file_names = [
                name.decode() if isinstance(name, bytes) else str(name) for name in names
            ]
        except UnicodeDecodeError:
            raise IfcnError("an image file_name is not UTF-8 text", self.path) from None
        self.row = {}
        for n, image_id in enumerate(self.image_ids.tolist()):
            if image_id in self.row:
                raise IfcnError(f"image id {image_id} appears twice", self.path)
            self.row[image_id] = n
        for group, offset in self.offsets.items():
            length = {len(self.columns[group, name]) for name in self.groups[group]}
            if (
                offset.dtype.kind not in "iu"
                or offset.shape != (num + 1,)
                or len(length) != 1
                or offset[0] != 0
                or offset[-1] != length.pop()
                or (np.diff(offset.astype(np.int64)) < 0).any()
            ):
                raise IfcnError(
                    f"inconsistent {self.kind} file: {group} offsets vs. column lengths", self.path
                )
            self.offsets[group] = offset.astype(np.int64)
        for name, column in image_columns.items():
            values = self.image_values[name]
            kind = np.dtype(column.dtype).kind
            if values.shape != (num, *column.shape) or values.dtype.kind != kind:
                raise IfcnError(f"damaged {self.kind} file: /images/{name} has shape "
                                f"{values.shape}", self.path)  # fmt: skip
        for (group, name), dataset in self.columns.items():
            column = self.groups[group][name]
            if column.text:
                if not is_text(dataset):
                    raise IfcnError(
                        f"{self.kind} file: /{group}/{name} holds {describe_type(dataset)}, "
                        "not text (an HDF5 string type, fixed or variable length)",
                        self.path,
                    )
                if dataset.ndim != 1:
                    raise IfcnError(
                        f"damaged {self.kind} file: /{group}/{name} has shape "
                        f"{dataset.shape}, not one text per row",
                        self.path,
                    )
            elif (
                dataset.shape[1:] != column.shape
                or dataset.dtype.kind != np.dtype(column.dtype).kind
            ):
                raise IfcnError(
                    f"damaged {self.kind} file: /{group}/{name} has rows of shape "
                    f"{dataset.shape[1:]} {dataset.dtype}",
                    self.path,
                )

    def _dataset(self, name: str) -> h5py.Dataset:
        try:
            return stored_dataset(self._file, name, self.path, self.kind)
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            raise IfcnError(f"damaged {self.kind} file: /{name}: {exc}", self.path) from None

    def row_bytes(self, group: str, name: str) -> int:
        """Bytes a row of a column takes in memory (a guess for variable-length text)."""
        dataset = self.columns[group, name]
        if dataset.dtype.kind == "O":
            return _VLEN_ROW_BYTES
        return dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64))

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes as Python values; `config` parsed from its JSON when it is JSON."""
        if self._attrs is None:
            out = {key: python_value(value) for key, value in self._file.attrs.items()}
            if isinstance(out.get("config"), str):
                with contextlib.suppress(json.JSONDecodeError):
                    out["config"] = json.loads(out["config"])
            self._attrs = out
        return dict(self._attrs)

    def index(self, image_id: int) -> int:
        """Row of an image in the image table."""
        try:
            return self.row[int(image_id)]
        except (KeyError, TypeError, ValueError):
            raise IfcnError(f"no image {image_id} in the {self.kind} file", self.path) from None

    def read(self, group: str, lo: int, hi: int, names: Sequence[str] | None = None) -> dict:
        """Rows lo:hi of a group's columns (text columns as lists of bytes, `read_text`)."""
        out = {}
        for name in names or self.groups[group]:
            dataset = self.columns[group, name]
            try:
                if self.groups[group][name].text:
                    out[name] = read_text(dataset, lo, hi)
                else:
                    out[name] = dataset[lo:hi]
            except (OSError, ValueError, RuntimeError, isal_zlib.error) as exc:
                message = f"damaged {self.kind} file: cannot read /{group}/{name} rows {lo}:{hi}"
                raise IfcnError(f"{message} ({exc})", self.path) from None
        return out


def read_text(column: h5py.Dataset, lo: int, hi: int) -> list[bytes]:
    """Rows lo:hi of a text column, as bytes without the padding.

    Any HDF5 string type h5py reads as bytes: fixed-length (NUL-padded, NUL-terminated or
    space-padded: NumPy strips NULs, spaces are stripped here) or variable-length.

    A read that spans a whole chunk or more of a column as `TableWriter` writes it (gzip only)
    takes the chunks with `read_direct_chunk` and inflates them here with ISA-L, the inverse of
    `_write_text`: the same zlib stream inflated 2-3x faster than zlib does, without HDF5's
    filter pipeline and its copies. A smaller read, or any other layout, goes through h5py,
    whose chunk cache serves the neighbouring reads of one image after another.
    """
    if column.dtype.kind != "S":
        return column[lo:hi].tolist()  # variable-length: bytes as stored
    if column.id.get_type().get_strpad() == h5py.h5t.STR_SPACEPAD:
        return [text.rstrip(b" ") for text in column[lo:hi].tolist()]
    rows = column.chunks[0] if column.chunks is not None else 0
    direct = (
        hi - lo >= rows > 0
        and column.compression == "gzip"
        and not column.shuffle
        and not column.fletcher32
        and column.scaleoffset is None
        and len(column.shape) == 1
    )
    if not direct:
        return column[lo:hi].tolist()  # NumPy strips the NUL padding
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
