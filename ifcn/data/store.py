"""Checked annotations: the proof that a COCO instances JSON passed the full validation, and
the compact arrays that stages read instead of parsing it again (DESIGN §3, §5; issue 24).

The full validation of a COCO-sized JSON (480 MB, 860k objects: every record, every mask
rasterised, every image file read) takes about a minute; training pays it in every process
and on every resume if it validates where it reads. So the validation runs once, in `ifcn data
check` and `ifcn data convert`, which record it in `<json>.checked.h5` beside the JSON: the
SHA-256 of the JSON's bytes, who checked it, the size and modification time of every image
file they read, and what the stages need of the annotations, as arrays: image ids, sizes and
file names; per annotation its image, id, category, crowd flag, stored area and box, mask
area, tight box and compressed RLE text. A stage that reads the JSON hashes its bytes (about
a second for 480 MB) and, when the record matches, maps the arrays (read-only, so the ranks
of a training share one copy in the page cache) instead of reading the JSON; a JSON whose
hash differs from its record was changed after the check and is refused, in one line that
says to check it again. A JSON never checked is validated fully by the stage that reads it,
as before; training records that validation in its run folder, so that its other ranks and
its resumes read the record (`checked_annotations`).

The record is verified cheaply where it is opened: its layout, a SHA-256 of all its arrays
(written with them), ids, offsets and sizes consistent, and every RLE text well formed; the
run sums of a mask's text are checked when the mask is decoded (`AnnotationStore.rles`). A
damaged record is refused in one line naming it.

The file is HDF5 with every dataset contiguous and uncompressed: readable with h5py, and
mapped into memory without a copy.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ifcn.atomic import atomic_path
from ifcn.data.instances import Instances, read_instances
from ifcn.data.jsonio import gc_paused
from ifcn.data.masks import MaskTable
from ifcn.data.rle import all_well_formed, rle_text_faults
from ifcn.errors import IfcnError

FORMAT = "ifcn-checked-annotations"
STORE_VERSION = 1
SUFFIX = ".checked.h5"
_HASH_BLOCK = 1 << 23
# name -> (dtype, trailing shape); "images" arrays have one row per image, "annotations" one
# per annotation, "offsets" one more than their rows, "chars" any length.
ARRAYS = {
    "image_id": ("int64", ()),
    "height": ("int64", ()),
    "width": ("int64", ()),
    "name_offset": ("int64", ()),
    "name_chars": ("uint8", ()),
    "image_stats": ("int64", (2,)),
    "ann_offset": ("int64", ()),
    "ann_id": ("int64", ()),
    "file_order": ("int64", ()),
    "category_id": ("int64", ()),
    "iscrowd": ("uint8", ()),
    "area": ("float64", ()),
    "bbox": ("float64", (4,)),
    "mask_area": ("int64", ()),
    "mask_box": ("float64", (4,)),
    "rle_offset": ("int64", ()),
    "rle_chars": ("uint8", ()),
}


def proof_path(json_path: str | Path) -> Path:
    """Where `data check` and `data convert` record the check of `json_path`: beside it."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.name + SUFFIX)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks; a missing file is an IfcnError naming it."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None
    return digest.hexdigest()


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        if array.size:  # an empty one is its header (memoryview cannot cast a zero shape)
            digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


class FileNames(Sequence[str]):
    """A store's image file names, decoded one at a time from its joined column: a list of
    COCO's 118k names would be ~10 MB of Python objects in every rank and DataLoader worker
    (whose touches copy the pages they share with their rank)."""

    def __init__(self, chars: np.ndarray, offset: np.ndarray):
        self._chars, self._offset = chars.view(np.ndarray), offset.view(np.ndarray)

    def __len__(self) -> int:
        return len(self._offset) - 1

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        return self._chars[self._offset[i] : self._offset[i + 1]].tobytes().decode()


@dataclass
class AnnotationStore:
    """The checked annotations of one COCO JSON (see the module's docstring): images sorted by
    id, each image's annotations in file order."""

    json_path: Path
    json_sha256: str
    checked_by: str
    arrays: dict[str, np.ndarray]
    categories: list[dict]
    info: dict
    path: Path | None = None  # the record's file; None while it lives in memory only
    images_verified: bool = False  # image_stats hold the files' stats when they were read

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def close(self) -> None:
        """Drop the arrays (and with them the file's mapping, once no view is left)."""
        self.arrays = {}

    def __len__(self) -> int:
        return len(self.arrays["image_id"])

    @property
    def num_annotations(self) -> int:
        return len(self.arrays["ann_id"])

    def index(self, image_id: int) -> int:
        """Row of image `image_id` (the ids are sorted); KeyError if the store lacks it."""
        ids = self.arrays["image_id"]
        index = int(np.searchsorted(ids, image_id))
        if index >= len(ids) or ids[index] != image_id:
            raise KeyError(image_id)
        return index

    def file_names(self) -> FileNames:
        """Every image's file name (relative to the image root), in image order."""
        return FileNames(self.arrays["name_chars"], self.arrays["name_offset"])

    def file_name(self, index: int) -> str:
        """Image `index`'s file name."""
        return self.file_names()[index]

    def image_table(self) -> dict[int, dict]:
        """Image entries by id: file_name, height and width (as `Instances.image_table`)."""
        return {
            image_id: {"file_name": name, "height": h, "width": w}
            for image_id, name, h, w in zip(
                self["image_id"].tolist(), self.file_names(), self["height"].tolist(),
                self["width"].tolist(), strict=True,
            )
        }  # fmt: skip

    def image_set(self) -> ImageSet:
        """The image table and `info` of the JSON (as `read_image_set` reads them), its
        entries made when read (`StoreImages`)."""
        return ImageSet(self.json_path, StoreImages(self), self.info)

    def annotation_slice(self, index: int) -> slice:
        """The rows of image `index`'s annotations."""
        offset = self.arrays["ann_offset"]
        return slice(int(offset[index]), int(offset[index + 1]))

    def texts(self, rows: slice | np.ndarray) -> list[bytes]:
        """The compressed RLE texts of annotation rows."""
        offset = self.arrays["rle_offset"]
        chars = self.arrays["rle_chars"]
        index = np.arange(len(offset) - 1)[rows]
        return [chars[offset[k] : offset[k + 1]].tobytes() for k in index.tolist()]

    def checked_texts(self) -> list[bytes]:
        """Every annotation's RLE text (in row order), all checked at once as `rles` checks
        one image's."""
        texts = self.texts(slice(None))
        rows = np.diff(self.arrays["ann_offset"])
        pixels = np.repeat(self.arrays["height"] * self.arrays["width"], rows)
        for k, fault in enumerate(rle_text_faults(texts, pixels)):
            if fault:
                ann = int(self.arrays["ann_id"][k])
                raise _damaged(self.path, f"annotation {ann}: {fault}", self.json_path)
        return texts

    def rles(self, index: int) -> list[dict]:
        """Image `index`'s masks as pycocotools RLEs (bytes counts), checked to cover exactly
        the image's pixels before pycocotools decodes them (a damaged record fails here)."""
        height, width = int(self["height"][index]), int(self["width"][index])
        texts = self.texts(self.annotation_slice(index))
        faults = rle_text_faults(texts, np.full(len(texts), height * width))
        bad = next((f for f in faults if f), None)
        if bad is not None:
            where = f"image {int(self['image_id'][index])}: {bad}"
            raise _damaged(self.path, where, self.json_path)
        return [{"size": [height, width], "counts": text} for text in texts]


class StoreImages(Mapping[int, dict]):
    """A store's image entries by id (file_name, height, width, as `image_table`), each made
    when it is read: COCO's 118k entries as dicts are ~50 MB of Python objects at once."""

    def __init__(self, store: AnnotationStore):
        self._store = store

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self) -> Iterator[int]:
        return iter(self._store["image_id"].tolist())

    def __getitem__(self, image_id: int) -> dict:
        return self._entry(self._store.index(image_id))

    def _entry(self, index: int) -> dict:
        store = self._store
        return {"file_name": store.file_name(index), "height": int(store["height"][index]),
                "width": int(store["width"][index])}  # fmt: skip

    def items(self) -> Iterator[tuple[int, dict]]:  # type: ignore[override]
        """(id, entry) in id order, without a lookup per id."""
        return ((i, self._entry(k)) for k, i in enumerate(self._store["image_id"].tolist()))

    def values(self) -> Iterator[dict]:  # type: ignore[override]
        return (entry for _, entry in self.items())


def _damaged(path: Path | None, what: str, json_path: Path) -> IfcnError:
    return IfcnError(
        f"damaged ({what}): delete it and run `ifcn data check --json {json_path}` again", path
    )


@gc_paused()
def build_store(
    instances: Instances,
    masks: MaskTable,
    *,
    checked_by: str,
    image_stats: np.ndarray | None = None,
) -> AnnotationStore:
    """The store of validated `instances` with their `masks` (`Instances.encode_masks`);
    `image_stats` ([images in sorted id order, 2]) when the image files were read."""
    ids = np.array(sorted(instances.images), np.int64)
    images = [instances.images[i] for i in ids.tolist()]
    names = [image["file_name"].encode() for image in images]
    anns = instances.annotations
    image_of = np.searchsorted(ids, np.array([a["image_id"] for a in anns], np.int64))
    order = np.argsort(image_of, kind="stable")
    counts = np.bincount(image_of, minlength=len(ids))
    texts = [masks.counts[k] for k in order.tolist()]
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))

    def stored(key: str, width: int) -> np.ndarray:
        nan = [float("nan")] * width
        values = [a.get(key, nan) for a in (anns[k] for k in order.tolist())]
        return np.array(values, np.float64).reshape(len(anns), *((width,) if width > 1 else ()))

    def numbers(key: str, dtype: str) -> np.ndarray:
        return np.array([int(anns[k].get(key, 0)) for k in order.tolist()], dtype)

    arrays = {
        "image_id": ids,
        "height": np.array([im["height"] for im in images], np.int64),
        "width": np.array([im["width"] for im in images], np.int64),
        "name_offset": np.concatenate([[0], np.cumsum([len(n) for n in names])]).astype(np.int64),
        "name_chars": np.frombuffer(b"".join(names), np.uint8).copy(),
        "image_stats": (
            np.full((len(ids), 2), -1, np.int64) if image_stats is None else image_stats
        ),
        "ann_offset": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "ann_id": numbers("id", "int64"),
        "file_order": order.astype(np.int64),
        "category_id": numbers("category_id", "int64"),
        "iscrowd": numbers("iscrowd", "uint8"),
        "area": stored("area", 1),
        "bbox": stored("bbox", 4),
        "mask_area": masks.area[order].astype(np.int64),
        "mask_box": masks.bbox[order].astype(np.float64).reshape(-1, 4),
        "rle_offset": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "rle_chars": np.frombuffer(b"".join(texts), np.uint8).copy(),
    }
    categories = [dict(instances.categories[c]) for c in sorted(instances.categories)]
    info = instances.data.get("info")
    return AnnotationStore(
        json_path=instances.path,
        json_sha256=instances.sha256,
        checked_by=checked_by,
        arrays=arrays,
        categories=categories,
        info=dict(info) if isinstance(info, dict) else {},
        images_verified=image_stats is not None,
    )


def write_store(store: AnnotationStore, path: str | Path) -> AnnotationStore:
    """Write the store to `path` (atomically) and return it mapped from there."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, array in store.arrays.items():
                f.create_dataset(name, data=np.ascontiguousarray(array))
            attrs = {
                "format": FORMAT,
                "version": STORE_VERSION,
                "json_name": store.json_path.name,
                "json_sha256": store.json_sha256,
                "checked_by": store.checked_by,
                "images_verified": bool(store.images_verified),
                "categories": json.dumps(store.categories),
                "info": json.dumps(store.info),
                "arrays_sha256": _arrays_sha256(store.arrays),
            }
            f.attrs.update(attrs)
    return open_store(path, store.json_path)


def _mapped(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    if dataset.chunks is not None or dataset.compression is not None:
        raise ValueError(f"'{dataset.name}' is not stored contiguously")
    offset = dataset.id.get_offset()
    if offset is None:  # no storage allocated: an empty array
        return np.zeros(dataset.shape, dataset.dtype)
    return np.memmap(path, dataset.dtype, "r", offset, dataset.shape)


def open_store(path: str | Path, json_path: str | Path) -> AnnotationStore:
    """Map the record at `path` of the JSON `json_path` and verify it (see the module's
    docstring); a damaged record is an IfcnError naming it."""
    path, json_path = Path(path), Path(json_path)
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if attrs.get("format") != FORMAT:
                raise ValueError("not a record of checked annotations")
            if attrs.get("version") != STORE_VERSION:
                raise ValueError(f"version {attrs.get('version')}, this ifcn reads {STORE_VERSION}")
            arrays = {name: _mapped(path, f[name]) for name in ARRAYS if name in f}
        categories = json.loads(attrs["categories"])
        info = json.loads(attrs["info"])
        store = AnnotationStore(
            json_path=json_path,
            json_sha256=str(attrs["json_sha256"]),
            checked_by=str(attrs["checked_by"]),
            arrays=arrays,
            categories=categories,
            info=info,
            path=path,
            images_verified=bool(attrs["images_verified"]),
        )
        fault = _structure_fault(store)
        if fault is None and _arrays_sha256(arrays) != attrs["arrays_sha256"]:
            fault = "its arrays do not match their SHA-256"
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        fault = str(exc) or type(exc).__name__
    if fault is not None:
        raise _damaged(path, fault, json_path)
    return store


def _structure_fault(store: AnnotationStore) -> str | None:
    """What makes the arrays inconsistent with each other, or None (cheap, vectorised)."""
    a = store.arrays
    missing = sorted(set(ARRAYS) - set(a))
    if missing:
        return f"no '{missing[0]}' array"
    for name, (dtype, trailing) in ARRAYS.items():
        if a[name].dtype != np.dtype(dtype) or a[name].shape[1:] != trailing:
            return f"'{name}' is not {dtype} of shape (n, {trailing})"
    images, anns = len(a["image_id"]), len(a["ann_id"])
    rows = {
        "height": images, "width": images, "image_stats": images, "name_offset": images + 1,
        "ann_offset": images + 1, "file_order": anns, "category_id": anns, "iscrowd": anns,
        "area": anns, "bbox": anns, "mask_area": anns, "mask_box": anns, "rle_offset": anns + 1,
    }  # fmt: skip
    for name, n in rows.items():
        if len(a[name]) != n:
            return f"'{name}' has {len(a[name])} rows, not {n}"
    for offset, chars in (("name_offset", "name_chars"), ("ann_offset", None),
                          ("rle_offset", "rle_chars")):  # fmt: skip
        o = a[offset]
        end = len(a[chars]) if chars else anns
        if o[0] != 0 or o[-1] != end or (np.diff(o) < 0).any():
            return f"'{offset}' does not run from 0 to {end}"
    if images and ((np.diff(a["image_id"]) <= 0).any()):
        return "image ids are not increasing"
    if (a["height"] <= 0).any() or (a["width"] <= 0).any():
        return "an image size is not positive"
    if not all_well_formed(a["rle_chars"], a["rle_offset"]):
        return "an RLE text is not well formed"
    if anns and (np.diff(a["rle_offset"]) == 0).any():
        return "an RLE text is empty"
    return None


def check_record(
    instances: Instances,
    masks: MaskTable,
    *,
    checked_by: str,
    image_stats: np.ndarray | None,
) -> AnnotationStore | str:
    """Record a passed check beside its JSON (`proof_path`); the written store, or why it could
    not be written (a read-only folder: stages then validate the JSON themselves)."""
    store = build_store(instances, masks, checked_by=checked_by, image_stats=image_stats)
    target = proof_path(instances.path)
    try:
        return write_store(store, target)
    except (OSError, IfcnError) as exc:
        target.unlink(missing_ok=True)
        return str(exc)


def cache_path(cache_dir: str | Path, json_path: str | Path, sha256: str) -> Path:
    """Where a stage keeps its own record of a JSON never checked: named by its hash."""
    return Path(cache_dir) / f"{Path(json_path).name}.{sha256[:16]}{SUFFIX}"


@gc_paused()
def checked_annotations(
    json_path: str | Path,
    *,
    reader: str,
    cache_dir: str | Path | None = None,
    workers: int = 1,
) -> AnnotationStore:
    """The annotations of a COCO JSON, by the cheapest sound route (see the module's docstring).

    The record beside the JSON when there is one (the JSON must hash to what it recorded);
    else a record of an earlier run in `cache_dir`; else the JSON validated fully, as `data
    check` does (`workers` processes rasterise its masks), into a store in memory (`path`
    None) that `reader` (the command) may record in `cache_dir` once the rest of its input
    passed (`write_store` to `cache_path`); its image files are still to be read.
    """
    json_path = Path(json_path)
    store = read_checked(json_path)
    if store is not None:
        return store
    sha256 = file_sha256(json_path)
    if cache_dir is not None:
        cached = cache_path(cache_dir, json_path, sha256)
        if cached.is_file():
            try:
                store = open_store(cached, json_path)
            except IfcnError:
                store = None  # a damaged record is made again
            if store is not None and store.json_sha256 == sha256:
                return store
    instances = read_instances(json_path)
    if instances.sha256 != sha256:
        raise IfcnError("changed while it was read", json_path)
    return build_store(instances, instances.encode_masks(workers), checked_by=reader)


def read_checked(json_path: str | Path) -> AnnotationStore | None:
    """The record beside a COCO JSON (`proof_path`), verified and matching the JSON's bytes;
    None when there is none. A JSON changed since its check is an IfcnError."""
    json_path = Path(json_path)
    proof = proof_path(json_path)
    if not proof.is_file():
        return None
    sha256 = file_sha256(json_path)
    store = open_store(proof, json_path)
    if store.json_sha256 != sha256:
        raise IfcnError(
            f"changed since `{store.checked_by}` checked it ({proof.name} records another "
            f"SHA-256): run `ifcn data check --json {json_path}` to check it again",
            json_path,
        )
    return store


@dataclass
class ImageSet:
    """The images a COCO JSON lists, by id (file_name, height, width), and its `info`."""

    json_path: Path
    images: Mapping[int, dict]
    info: dict


def read_image_set(json_path: str | Path) -> ImageSet:
    """The image table of a COCO JSON: from its check record when it has one (`read_checked`),
    else from the JSON validated fully."""
    store = read_checked(json_path)
    if store is not None:
        return ImageSet(Path(json_path), store.image_table(), store.info)
    instances = read_instances(json_path)
    info = instances.data.get("info")
    return ImageSet(instances.path, instances.image_table(), info if isinstance(info, dict) else {})
