"""candidates.h5: what `ifcn infer` hands to `ifcn nms` (internal format), and `ifcn merge`.

Inference keeps the top windows of every scale with their m×m mask probabilities; NMS turns
them into proposals later, so its thresholds change without rerunning the network (DESIGN §6).
The layout mirrors proposals.h5 (DESIGN §7): flat columns, one row per candidate window, and
`/images/offset` saying which rows belong to which image.

```
/                      attrs: format="ifcn-candidates", format_version=1, config (JSON),
                              checkpoint_sha256, dataset, scales, max_size (0: none), k, m,
                              head, pre_nms_topk, shard ("i/n"), objectness="logit"
/images/id             (I,)       int64
/images/file_name      (I,)       str
/images/height         (I,)       int32
/images/width          (I,)       int32
/images/offset         (I+1,)     int64    candidates of image i are rows offset[i]:offset[i+1]
/candidates/masks      (P, S, S)  float16  mask probabilities (sigmoid), S = m (or the
                                           ~DeepMask head's mask side)
/candidates/boxes      (P, 4)     float32  window box x0, y0, x1, y1 in original-image pixels
/candidates/objectness (P,)       float32  objectness *logit* (ranks exactly; no saturation)
/candidates/scale      (P,)       int8     index into the scales attribute
```

A shard of an inference job is a contiguous chunk of the sorted image ids, so shards merge by
concatenation (`ifcn merge`). Files are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ifcn.errors import IfcnError
from ifcn.proposals.format import index_images

FORMAT = "ifcn-candidates"
FORMAT_VERSION = 1
# Attributes the producer supplies; the writer adds format, format_version and objectness.
REQUIRED_ATTRS = ("config", "checkpoint_sha256", "dataset", "scales", "k", "m", "shard")
# Attributes that every shard of one inference job shares (all but the shard itself).
SHARED_ATTRS = ("config", "checkpoint_sha256", "dataset", "scales", "max_size", "k", "m", "head")

_FLUSH_ROWS = 8192  # candidates buffered before they go to the file (~7 MB of 21×21 masks)
_COLUMNS = ("masks", "boxes", "objectness", "scale")


@dataclass
class ImageCandidates:
    """One image's candidate windows: what `CandidateWriter.add` takes and the reader returns."""

    image_id: int
    file_name: str
    height: int
    width: int
    masks: np.ndarray  # (n, S, S) float16 probabilities
    boxes: np.ndarray  # (n, 4) float32 window boxes in original-image pixels
    objectness: np.ndarray  # (n,) float32 logits
    scale: np.ndarray  # (n,) int8 index into the scales attribute

    def __len__(self) -> int:
        return len(self.objectness)


def _attr_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def _python(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


class CandidateWriter:
    """Streams images' candidates into candidates.h5; the file appears only on a clean close.

    Use as a context manager: an exception inside the block removes the temporary file and
    leaves the target path untouched.
    """

    def __init__(self, path: str | Path, attrs: Mapping[str, Any], mask_size: int):
        self.path = Path(path)
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise IfcnError(f"candidate file attributes missing: {', '.join(missing)}", self.path)
        self._attrs = {
            **{key: _attr_value(value) for key, value in attrs.items()},
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "objectness": "logit",
        }
        self.mask_size = int(mask_size)
        self._num_scales = len(np.atleast_1d(self._attrs["scales"]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.path.name}."
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=prefix, suffix=".tmp")
        os.close(fd)
        self._tmp = Path(tmp)
        self._file = h5py.File(self._tmp, "w")
        group = self._file.create_group("candidates")
        s = self.mask_size
        shapes = {
            "masks": ((s, s), np.float16, 256),
            "boxes": ((4,), np.float32, 8192),
            "objectness": ((), np.float32, 16384),
            "scale": ((), np.int8, 16384),
        }
        self._columns = {
            name: group.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(rows, *shape),
            )  # fmt: skip
            for name, (shape, dtype, rows) in shapes.items()
        }
        self._images: dict[str, list] = {"id": [], "file_name": [], "height": [], "width": []}
        self._seen: set[int] = set()
        self._counts: list[int] = []
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in _COLUMNS}
        self._buffered = 0
        self._written = 0
        self._open = True

    def __enter__(self) -> CandidateWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, record: ImageCandidates) -> None:
        """Append one image's candidates (possibly none)."""
        if not self._open:
            raise IfcnError("writer is closed", self.path)
        image_id = int(record.image_id)
        where = f"image {image_id}"
        if image_id in self._seen:
            raise IfcnError(f"{where} added twice", self.path)
        n = len(record.objectness)
        s = self.mask_size
        masks = np.asarray(record.masks, dtype=np.float16).reshape(n, s, s)
        boxes = np.asarray(record.boxes, dtype=np.float32).reshape(n, 4)
        scale = np.asarray(record.scale).reshape(n)
        if n and (scale.min() < 0 or scale.max() >= self._num_scales):
            raise IfcnError(f"{where}: scale index outside the scales attribute", self.path)
        self._seen.add(image_id)
        self._images["id"].append(image_id)
        self._images["file_name"].append(str(record.file_name))
        self._images["height"].append(int(record.height))
        self._images["width"].append(int(record.width))
        self._counts.append(n)
        if not n:
            return
        self._buffer["masks"].append(masks)
        self._buffer["boxes"].append(boxes)
        self._buffer["objectness"].append(np.asarray(record.objectness, np.float32).reshape(n))
        self._buffer["scale"].append(scale.astype(np.int8))
        self._buffered += n
        if self._buffered >= _FLUSH_ROWS:
            self._flush()

    def add_rows(self, images: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray]) -> None:
        """Append several images at once from another file's columns (used by merge)."""
        counts = np.diff(images["offset"])
        for n, image_id in enumerate(images["id"]):
            if int(image_id) in self._seen:
                raise IfcnError(f"image {int(image_id)} added twice", self.path)
            self._seen.add(int(image_id))
            for key in ("id", "file_name", "height", "width"):
                self._images[key].append(_python(images[key][n]))
            self._counts.append(int(counts[n]))
        self._flush()
        rows = len(columns["objectness"])
        end = self._written + rows
        for name, column in self._columns.items():
            column.resize(end, axis=0)
            column[self._written : end] = columns[name]
        self._written = end

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

    def close(self) -> None:
        """Write the image table and attributes, then rename the file into place."""
        if not self._open:
            return
        try:
            self._flush()
            images = self._file.create_group("images")
            images.create_dataset("id", data=np.asarray(self._images["id"], np.int64))
            images.create_dataset(
                "file_name", data=self._images["file_name"], dtype=h5py.string_dtype()
            )
            for name in ("height", "width"):
                images.create_dataset(name, data=np.asarray(self._images[name], np.int32))
            offset = np.concatenate([[0], np.cumsum(self._counts, dtype=np.int64)])
            images.create_dataset("offset", data=offset.astype(np.int64))
            self._file.attrs.update(self._attrs)
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        finally:
            self._open = False

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._open = False
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class Candidates:
    """Reader of candidates.h5: the image table in memory, one image's rows on demand.

    A truncated or foreign file is an IfcnError naming it, raised when it is opened or, for
    damage inside the data, when the damaged rows are read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise IfcnError("candidates file not found", self.path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise IfcnError(
                f"cannot read candidates file: truncated or not HDF5 ({exc})", self.path
            ) from None
        try:
            self._check_and_index()
        except BaseException:
            self._file.close()
            raise

    def _check_and_index(self) -> None:
        fmt = _python(self._file.attrs.get("format"))
        if fmt != FORMAT:
            raise IfcnError(f"not an ifcn candidates file (format attribute {fmt!r})", self.path)
        version = _python(self._file.attrs.get("format_version"))
        if version != FORMAT_VERSION:
            raise IfcnError(
                f"candidates format_version {version!r}; this ifcn reads {FORMAT_VERSION}",
                self.path,
            )
        try:
            images, group = self._file["images"], self._file["candidates"]
            self.image_ids = images["id"][:].astype(np.int64)
            self.file_names = images["file_name"].asstr()[:]
            self.heights = images["height"][:].astype(np.int64)
            self.widths = images["width"][:].astype(np.int64)
            self.offset = images["offset"][:].astype(np.int64)
            self._columns = {name: group[name] for name in _COLUMNS}
        except (KeyError, OSError) as exc:
            raise IfcnError(f"damaged candidates file ({exc})", self.path) from None
        self._row = index_images(
            self.image_ids, self.offset, list(self._columns.values()), self.path, "candidates"
        )

    def __enter__(self) -> Candidates:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_candidates(self) -> int:
        return int(self.offset[-1])

    @property
    def mask_size(self) -> int:
        return int(self._columns["masks"].shape[1])

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes as Python values; `config` parsed from its JSON."""
        out = {key: _python(value) for key, value in self._file.attrs.items()}
        if isinstance(out.get("config"), str):
            out["config"] = json.loads(out["config"])
        return out

    def read(self, n: int) -> ImageCandidates:
        """The candidates of the n-th image in file order."""
        lo, hi = int(self.offset[n]), int(self.offset[n + 1])
        cols = self.read_rows(lo, hi)
        return ImageCandidates(
            image_id=int(self.image_ids[n]),
            file_name=str(self.file_names[n]),
            height=int(self.heights[n]),
            width=int(self.widths[n]),
            masks=cols["masks"],
            boxes=cols["boxes"],
            objectness=cols["objectness"],
            scale=cols["scale"],
        )

    def get(self, image_id: int) -> ImageCandidates:
        try:
            return self.read(self._row[int(image_id)])
        except KeyError:
            raise IfcnError(f"no image {image_id} in the candidates file", self.path) from None

    __getitem__ = get

    def read_rows(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Columns of rows lo:hi; damage in the data is an IfcnError naming the file."""
        try:
            return {name: column[lo:hi] for name, column in self._columns.items()}
        except (OSError, ValueError) as exc:
            raise IfcnError(f"damaged candidates file, rows {lo}:{hi} ({exc})", self.path) from None

    def __iter__(self) -> Iterator[ImageCandidates]:
        for n in range(len(self)):
            yield self.read(n)
