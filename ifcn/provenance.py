"""Where an output came from: the code's commit, package versions, time, and input hashes.

Stored in proposals.h5's attributes and shown in the report, so a file found on a shared disk
months later still says which code and which ground truth made it.
"""

from __future__ import annotations

import datetime
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import ifcn

PACKAGES = ("torch", "torchvision", "numpy", "pycocotools", "h5py", "opencv-python-headless")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(where: str | Path | None = None) -> str:
    """The commit of the checkout holding the ifcn package ("+dirty" if it has local changes);
    "unknown" for an installed wheel or a machine without git."""
    where = Path(where) if where is not None else Path(ifcn.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "") if commit else "unknown"


def package_versions() -> dict[str, str]:
    """Versions of Python, ifcn and the packages that decide the numbers (without importing
    them: evaluation never imports torch)."""
    versions = {"python": platform.python_version(), "ifcn": ifcn.__version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_provenance() -> dict[str, object]:
    """Commit, versions and the time (UTC, ISO 8601) of the run writing an output."""
    return {
        "commit": git_commit(),
        "versions": package_versions(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
