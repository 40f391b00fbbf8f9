"""Fetch a dataset's official archives, verify them, unpack them.

Downloads resume (HTTP Range) into `<name>.part`, are verified against the checksum the dataset
publishes before they take their final name, and unpack through a temporary folder so a failure
leaves nothing half-extracted. A dataset whose unpacked files are present is not fetched again.
Offline, or on a checksum mismatch, the error says which file to place where by hand.
Nothing here runs at import time; tests pass their own table of archives.

The command `ifcn data download` is `ifcn.commands.data_download`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ifcn import __version__
from ifcn.errors import IfcnError
from ifcn.progress import progress_bar

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Archive:
    """One archive: tried at each URL in turn; done once every path in `provides` exists."""

    filename: str
    urls: tuple[str, ...]
    checksum: str  # "<algorithm>:<hex digest>", e.g. "md5:6cd6e1..."
    provides: tuple[str, ...]


_COCO = "http://images.cocodataset.org"
_VOC = "VOCdevkit/VOC2012"
_SBD = "benchmark_RELEASE/dataset"

# Official locations and the checksums recorded for them (see docs/datasets.md for sources).
DATASETS: dict[str, tuple[Archive, ...]] = {
    "voc2012": (
        Archive(
            "VOCtrainval_11-May-2012.tar",
            (
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            ),
            "md5:6cd6e144f989b92b3379bac3b3de84fd",
            (
                f"{_VOC}/JPEGImages",
                f"{_VOC}/SegmentationObject",
                f"{_VOC}/SegmentationClass",
                f"{_VOC}/ImageSets/Segmentation/val.txt",
            ),
        ),
    ),
    "sbd": (
        Archive(
            "benchmark.tgz",
            (
                "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
                "semantic_contours/benchmark.tgz",
            ),
            "md5:82b4d87ceb2ed10f6038a1cba92111cb",
            (f"{_SBD}/img", f"{_SBD}/inst", f"{_SBD}/cls", f"{_SBD}/train.txt", f"{_SBD}/val.txt"),
        ),
    ),
    "coco2014": (
        Archive(
            "annotations_trainval2014.zip",
            (f"{_COCO}/annotations/annotations_trainval2014.zip",),
            "md5:0a379cfc70b0e71301e0f377548639bd",
            ("annotations/instances_train2014.json", "annotations/instances_val2014.json"),
        ),
        Archive(
            "val2014.zip",
            (f"{_COCO}/zips/val2014.zip",),
            "md5:a3d79f5ed8d289b7a7554ce06a5782b3",
            ("val2014",),
        ),
        Archive(
            "train2014.zip",
            (f"{_COCO}/zips/train2014.zip",),
            "md5:0da8c0bd3d6becc4dcb32757491aca88",
            ("train2014",),
        ),
    ),
    "coco2017": (
        Archive(
            "annotations_trainval2017.zip",
            (f"{_COCO}/annotations/annotations_trainval2017.zip",),
            "md5:f4bbac642086de4f52a3fdda2de5fa2c",
            ("annotations/instances_train2017.json", "annotations/instances_val2017.json"),
        ),
        Archive(
            "val2017.zip",
            (f"{_COCO}/zips/val2017.zip",),
            "md5:442b8da7639aecaf257c1dceb8ba8c80",
            ("val2017",),
        ),
        Archive(
            "train2017.zip",
            (f"{_COCO}/zips/train2017.zip",),
            "md5:cced6f7f71b7629ddf16f17bbcfab6b2",
            ("train2017",),
        ),
    ),
    "pennfudan": (
        Archive(
            "PennFudanPed.zip",
            ("https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip",),
            "md5:5aaa3dee905cef73325923716e38fc6d",
            ("PennFudanPed/PNGImages", "PennFudanPed/PedMasks"),
        ),
    ),
}


class _Interrupted(Exception):
    """The connection ended before the announced length: resume from what arrived."""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _split_checksum(checksum: str) -> tuple[str, str]:
    algorithm, _, expected = checksum.partition(":")
    return algorithm, expected.lower()


def is_present(archive: Archive, out: Path) -> bool:
    """True when everything the archive unpacks to is already there."""
    return all((out / p).exists() for p in archive.provides)


def download_dataset(
    name: str,
    out: str | Path,
    table: dict[str, tuple[Archive, ...]] | None = None,
    mirror: str | None = None,
    keep_archives: bool = True,
    progress: bool = True,
) -> list[str]:
    """Make every archive of dataset `name` present and unpacked under `out`; one line each."""
    table = DATASETS if table is None else table
    if name not in table:
        raise IfcnError(f"unknown dataset '{name}' (choose from {', '.join(table)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for archive in table[name]:
        if is_present(archive, out):
            lines.append(f"{archive.filename}: already unpacked in {out}")
            continue
        path = fetch(archive, out, mirror=mirror, progress=progress)
        unpack(path, out)
        if not is_present(archive, out):
            missing = [p for p in archive.provides if not (out / p).exists()]
            raise IfcnError(
                f"unpacked, but {missing[0]} is missing: not the expected archive", path
            )
        if not keep_archives:
            path.unlink()
        lines.append(f"{archive.filename}: verified and unpacked in {out}")
    return lines


def fetch(archive: Archive, out: Path, mirror: str | None = None, progress: bool = True) -> Path:
    """The verified archive at out/<filename>: a copy placed there by hand, or downloaded."""
    dest = out / archive.filename
    algorithm, expected = _split_checksum(archive.checksum)
    urls = list(archive.urls)
    if mirror:
        urls.insert(0, f"{mirror.rstrip('/')}/{archive.filename}")
    if dest.exists():
        actual = file_digest(dest, algorithm)
        if actual != expected:
            raise IfcnError(
                f"checksum mismatch: expected {algorithm} {expected}, got {actual}; replace it "
                f"with a good copy of {urls[-1]} or delete it to download again",
                dest,
            )
        return dest
    part = dest.with_name(dest.name + ".part")
    url = _download_any(urls, part, dest, archive.checksum, progress)
    actual = file_digest(part, algorithm)
    if actual != expected:
        part.unlink()
        raise IfcnError(
            f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; the "
            f"download was removed. Rerun, or place a good copy of {archive.filename} at {dest}"
        )
    os.replace(part, dest)
    return dest


def _download_any(urls: list[str], part: Path, dest: Path, checksum: str, progress: bool) -> str:
    """Download into `part` from the first URL that works, resuming while bytes keep coming."""
    reason = "no URL"
    for url in urls:
        while True:
            before = part.stat().st_size if part.exists() else -1
            try:
                _download(url, part, progress)
                return url
            except _Interrupted as exc:
                reason = str(exc)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = str(getattr(exc, "reason", None) or exc)
            if (part.stat().st_size if part.exists() else -1) <= before:
                break  # no progress at this URL: try the next one
    raise IfcnError(
        f"cannot download {urls[0]} ({reason}); place {dest.name} ({checksum}) at {dest} by hand "
        "and rerun (a partial download resumes)"
    )


def _download(url: str, part: Path, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"ifcn/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return  # nothing left to send: the checksum decides whether it is whole
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignores ranges: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        bar = progress_bar(
            total=total,
            initial=offset,
            desc=part.name.removesuffix(".part"),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            leave=False,
        )
        with open(part, "ab" if offset else "wb") as f, bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes")


def unpack(path: Path, out: Path) -> None:
    """Extract a tar or zip archive into `out` through a temporary folder beside it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".unpack", dir=out))
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                tar.extractall(tmp, filter="data")
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)
        else:
            raise IfcnError("not a tar or zip archive", path)
        for entry in sorted(tmp.iterdir()):
            _move_into(entry, out / entry.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise IfcnError(f"cannot unpack ({exc}); nothing was extracted", path) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(src: Path, dest: Path) -> None:
    """Move `src` to `dest`, merging into an existing folder of the same name."""
    if dest.is_dir() and src.is_dir():
        for child in sorted(src.iterdir()):
            _move_into(child, dest / child.name)
    else:
        os.replace(src, dest)
