"""JSON files as every reader of the data contract takes them: bytes read (or mapped) in one go,
parsed by orjson with the cycle collector paused, NaN and Infinity refused, and written through a
temporary file so that a crash never leaves a JSON that looks complete; and the type tests that
the validators apply to JSON values (`is_int`, `is_number`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ifcn.atomic import atomic_path
from ifcn.errors import IfcnError


def read_bytes(path: str | Path) -> bytearray:
    """A file's bytes (mutable, so that a reader may write into them); a missing or unreadable
    file is an IfcnError naming it."""
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(data) != len(data) or f.read(1):
                raise OSError("the file changed while it was read")
            return data
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None


def map_file(path: Path) -> mmap.mmap | bytearray:
    """A file's bytes mapped privately (written pages are this process's copies): no read, no
    copy, and forked workers share the pages. An empty file is read instead."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return bytearray()
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=prot)
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read ({exc.strerror or exc})", path) from None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector. Building a parsed JSON's millions of containers triggers
    it thousands of times, two thirds of the parse time, and they hold no cycle to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_json(raw: bytes | bytearray | mmap.mmap, path: str | Path) -> Any:
    """JSON text parsed by orjson, which refuses NaN and Infinity (Python's json reads them)."""
    try:
        with gc_paused():
            return orjson.loads(memoryview(raw) if isinstance(raw, mmap.mmap) else raw)
    except orjson.JSONDecodeError as exc:
        raise IfcnError(f"not valid JSON ({exc})", path) from None


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is an IfcnError naming it."""
    return parse_json(read_bytes(path), path)


def write_json_atomic(data: Any, path: str | Path) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))


def is_int(value: Any) -> bool:
    """An integer proper: not a bool, not a float that happens to be whole, not a string."""
    return type(value) is int


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinity)."""
    return type(value) is int or (type(value) is float and math.isfinite(value))
