"""The failures the CLI reports in one line (and exit status 2) instead of a traceback.

Two kinds are expected in normal use: bad input (`IfcnError`, raised by the library with the
file and the problem) and the system refusing a file (`OSError`: an unwritable or missing
folder, a full disk), described by `describe_os_error`. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import os
import re

# errnos that only a write raises: with no file named, the file being written is the culprit
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# h5py names the file inside its message: "... (unable to open file: name = 'x.h5', errno = 2 ..."
_H5PY_NAME = re.compile(r"\b(?:file)?name = '([^']*)'")


class IfcnError(Exception):
    """Bad input or a failed stage: the message names the file and the problem."""

    def __init__(self, message: str, path: object | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)


def describe_os_error(exc: OSError, writing: object | None = None) -> str:
    """``<path>: <reason>`` in one line, e.g. ``results/x: Permission denied``.

    The path is the one the exception names (both for a rename), else the one in an h5py
    message, else `writing` (the output being written) when the error can only come from a
    write, such as a full disk. The reason is the system's wording for the errno.
    """
    if exc.errno:
        reason = os.strerror(exc.errno)
    else:
        # a re-raised worker error carries the original traceback: its last line is the error
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
    if exc.filename is not None:
        path = _name(exc.filename)
        if exc.filename2 is not None:
            path += f" -> {_name(exc.filename2)}"
    elif match := _H5PY_NAME.search(str(exc)):
        path = match.group(1)
    elif exc.errno in _WRITE_ERRNOS and writing is not None:
        path = str(writing)
    else:
        return reason
    return f"{path}: {reason}"


def _name(filename: object) -> str:
    return (
        os.fsdecode(filename) if isinstance(filename, str | bytes | os.PathLike) else str(filename)
    )
