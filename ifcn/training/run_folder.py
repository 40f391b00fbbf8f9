"""The run folder (``--out``) of a training: who writes it, and which checkpoint a run continues.

One training at a time writes a run folder: rank 0 holds an exclusive ``flock`` on
``<out>/.ifcn.lock`` for the whole run, so that a second `ifcn train` into the same folder
stops with one line instead of interleaving the log and mixing checkpoints. The kernel drops
the lock when its process ends, however it ends, so a lock left by a dead process never blocks.

``--resume auto`` continues the newest checkpoint of the folder; a checkpoint at the run's last
iteration means the run was complete, and a run started again on it (`snakemake --forcerun
train` after deleting the outputs) trains from iteration 0: the old checkpoints are moved
aside to ``checkpoints.old-<time>/``, and a line says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ifcn.errors import IfcnError
from ifcn.training import checkpoint
from ifcn.training.distributed import DistInfo, run_on_main

LOCK_NAME = ".ifcn.lock"


class Resume(NamedTuple):
    """The checkpoint a run continues from and its validated contents."""

    path: Path
    state: dict


@dataclass(frozen=True)
class Run:
    """A training's locked run folder, its processes and device, and what it resumes."""

    out_dir: Path
    info: DistInfo
    device: torch.device
    resume: Resume | None = None
    show_progress: bool = True


def output_folder(out_dir: str | Path) -> Path:
    """``--out`` as a folder; an existing file there is refused before any work."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise IfcnError("--out is an existing file, not a folder", out_dir)
    return out_dir


class RunLock:
    """An exclusive, non-blocking ``flock`` on the run folder's lock file, with the holder's PID."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise IfcnError(f"cannot create the run folder: {exc.strerror}", self.out_dir) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IfcnError(
                f"is in use by process {holder} (another training writes there); wait for it "
                "to end or choose another --out",
                self.out_dir,
            ) from None
        except OSError as exc:
            # a file system without locks (Lustre mounted without flock): go on, and say so
            os.close(fd)
            print(
                f"ifcn: cannot lock {self.out_dir} ({exc.strerror}): make sure that no other "
                "training writes there",
                file=sys.stderr,
            )
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _load_given(path: Path, kind: str, check: Callable[[dict, Path, bool], None]) -> Resume:
    state = checkpoint.load(path, kind=kind, resumable=True)
    check(state, path, False)
    return Resume(path, state)


def set_aside(out_dir: Path) -> Path:
    """Move ``out_dir/checkpoints`` to ``checkpoints.old-<time>`` (a free name); return it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        aside = out_dir / (f"checkpoints.old-{stamp}" + (f".{n}" if n else ""))
        if not aside.exists():
            try:
                os.rename(out_dir / "checkpoints", aside)
            except OSError as exc:
                raise IfcnError(
                    f"cannot move the checkpoints of a complete run aside: {exc.strerror}",
                    out_dir / "checkpoints",
                ) from None
            return aside
    raise IfcnError("cannot find a free name to move the checkpoints aside", out_dir)


@contextlib.contextmanager
def start_run(
    out_dir: Path,
    resume: str | None,
    info: DistInfo,
    device: torch.device,
    *,
    kind: str,
    check: Callable[[dict, Path, bool], None],
    iters: int,
    show_progress: bool = True,
) -> Iterator[Run]:
    """Lock ``out_dir`` for the run and find the checkpoint of ``--resume`` (a path or auto).

    A path is checked before the folder is touched, so that a wrong one writes nothing. Then
    rank 0 locks the folder, removes the temporaries a killed run left, and for ``auto`` picks
    the newest checkpoint that loads. Every checkpoint is validated as a training checkpoint of
    ``kind``; ``check(state, path, auto)`` refuses one that does not fit the config
    (architecture, categories) and, for ``auto``, one written under other settings.
    """
    given = None
    if resume is not None and resume != "auto":
        given = _load_given(Path(resume), kind, check)
    lock = RunLock(out_dir)
    found: dict[str, dict] = {}

    def prepare() -> str | None:
        lock.acquire()
        checkpoint.remove_temporaries(out_dir)
        if resume != "auto":
            return None
        latest = checkpoint.load_latest(out_dir, kind, resumable=True)
        if latest is None:
            return None
        path, state = latest
        check(state, path, True)
        if state["iteration"] == iters:
            aside = set_aside(out_dir)
            print(
                f"ifcn: --resume auto: {path} is at iteration {iters}, the last of this run: "
                f"the run was complete; its checkpoints moved to {aside}, training from "
                "iteration 0",
                file=sys.stderr,
            )
            return None
        found["state"] = state
        return str(path)

    try:
        chosen = run_on_main(prepare, device)
        if chosen is not None:
            path = Path(chosen)
            state = found.get("state") or checkpoint.load(path, kind=kind, resumable=True)
            given = Resume(path, state)
        yield Run(out_dir, info, device, given, show_progress)
    finally:
        lock.release()
