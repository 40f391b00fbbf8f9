"""Writing outputs so that a crash never leaves a file that looks finished (DESIGN §11).

Everything is written to a temporary file beside the target, ``.<name>.<host>.<pid>.<hex>.tmp``,
and renamed into place only when complete; the temporary file is removed on every exit path a
process survives. One killed outright (SIGKILL, the OOM killer) leaves its temporary behind, so
the next write of the same target first sweeps that target's temporaries whose writer is gone
(written on this host by a process that no longer runs). It never touches another target's
temporaries, nor those of a live process or of another host, so concurrent jobs (the shards of
an inference job write different targets) keep their files.

Files are created with mode 0666 less the umask, as `open` creates them (`mkstemp`'s 0600 would
hide outputs from colleagues and web servers).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

from ifcn.errors import IfcnError

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_SUFFIX = ".tmp"
# every temporary this process created, with its pid (a forked child inherits the list): what
# its writer did not rename or remove is removed by `remove_leftovers` when the stage ends
_made: list[tuple[int, Path]] = []


def _pattern(target: Path) -> re.Pattern:
    name = re.escape(target.name)
    return re.compile(rf"^\.{name}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temporaries(target: str | Path) -> list[Path]:
    """Temporaries of `target` left by writers that no longer run on this host."""
    target = Path(target)
    pattern = _pattern(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    stale = []
    for name in names:
        found = pattern.match(name)
        if found and found["host"] == _HOST and not _running(int(found["pid"])):
            stale.append(target.parent / name)
    return stale


def sweep_stale(target: str | Path) -> None:
    """Remove the temporaries of `target` whose writer is gone (see the module's docstring)."""
    for path in stale_temporaries(target):
        with contextlib.suppress(OSError):
            path.unlink()


def temporary_path(target: str | Path, created: list[Path] | None = None) -> Path:
    """Create an empty temporary file beside `target` (mode 0666 less the umask), named so that
    `sweep_stale` can tell whether its writer still runs, after sweeping stale ones.

    The target's folder is created if missing. A target that is a folder, or a folder that
    cannot be written, is an IfcnError naming it. The file's name is appended to `created`, if
    given, before the file exists: a stop (ifcn.signals) raised right after its creation, before
    the caller has the name, still leaves the caller what to remove.
    """
    target = Path(target)
    if target.is_dir():
        raise IfcnError("is a folder; give a file name to write", target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IfcnError(
            f"cannot create the output folder ({exc.strerror})", target.parent
        ) from None
    sweep_stale(target)
    while True:
        path = (
            target.parent / f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}{_SUFFIX}"
        )
        if created is not None:
            created.append(path)
        _made.append((os.getpid(), path))
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:  # not ours (a dead process of this pid left it): keep it
            if created is not None:
                created.remove(path)
            _made.pop()
            continue
        except OSError as exc:
            raise IfcnError(f"cannot write here ({exc.strerror})", target) from None


def remove_leftovers() -> list[Path]:
    """Remove the temporaries this process created and still has; return them. Each writer
    removes its own, but a stop (ifcn.signals) can land between a writer's creation and the
    `with` that would remove it: the CLI calls this as a stage ends, so none is left."""
    pid = os.getpid()
    left = [path for owner, path in _made if owner == pid and path.exists()]
    for path in left:
        with contextlib.suppress(OSError):
            path.unlink()
    _made[:] = [(owner, path) for owner, path in _made if owner != pid]
    return left


def output_file(text: str | Path) -> Path:
    """An output file named on the command line. A name ending in a path separator names a
    folder, which `Path` would silently drop: refused, rather than writing `x.json` for
    `x.json/`."""
    if isinstance(text, str) and text.endswith(("/", os.sep)):
        raise IfcnError("ends in '/', which names a folder; give the name of the file to write",
                        text)  # fmt: skip
    return Path(text)


def write_error(exc: OSError, target: str | Path) -> IfcnError:
    """The one-line error for an OSError while writing `target` (disk full, quota, I/O)."""
    if exc.errno:
        reason = os.strerror(exc.errno)  # HDF5's own text runs to several lines
    else:
        reason = (exc.strerror or str(exc) or type(exc).__name__).splitlines()[0]
    return IfcnError(f"cannot write ({reason})", target)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    The temporary file is removed whatever happens; the rename failing (e.g. the disk is full)
    is an IfcnError naming `path`.
    """
    path = Path(path)
    created: list[Path] = []
    try:
        tmp = temporary_path(path, created)
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(exc, path) from None
    finally:
        for tmp in created:
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise write_error(exc, path) from None
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())
