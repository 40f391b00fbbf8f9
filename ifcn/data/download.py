"""Fetch a dataset's official archives, verify them, unpack them.

Downloads resume (HTTP Range) into `<name>.part`, are verified against the checksum the dataset
publishes before they take their final name, and unpack through a temporary folder so a failure
leaves nothing half-extracted. A dataset whose unpacked files are present is not fetched again.
Offline, or on a checksum mismatch, the error says which file to place where by hand.
Nothing here runs at import time; tests pass their own table of archives. The archives, their
URLs and checksums are the dataset registry's (`ifcn.data.datasets.ARCHIVES`).

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
from pathlib import Path

from ifcn import __version__
from ifcn.data.datasets import ARCHIVES, Archive
from ifcn.errors import IfcnError
from ifcn.progress import progress_bar

CHUNK = 1 << 20
TIMEOUT_S = 60
# archive set -> its archives (a name tests replace with a table of their own)
DATASETS: dict[str, tuple[Archive, ...]] = ARCHIVES


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
