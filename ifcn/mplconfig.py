"""matplotlib's config and cache folder for a user without a writable home (DESIGN §11).

matplotlib keeps its font cache in ``$XDG_CACHE_HOME/matplotlib`` (or ``~/.cache/matplotlib``)
and its settings in ``$XDG_CONFIG_HOME/matplotlib`` (``~/.config/matplotlib``). When either
cannot be created, as for a batch user whose HOME does not exist, it makes a
``/tmp/matplotlib-*`` folder, warns about it on stderr, and leaves it behind when it runs in a
child process (evaluate's plotting process). `matplotlib_config_dir` gives such a run a
temporary MPLCONFIGDIR instead, which every process of the stage inherits and which is removed
when the stage ends, signals included. A MPLCONFIGDIR the user set, or writable defaults, are
left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _creatable(folder: Path) -> bool:
    """Whether `folder` is a writable folder or could be made: its nearest existing ancestor
    is a writable folder."""
    for path in (folder, *folder.parents):
        if path.exists():
            return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
    return False


def defaults_writable(environ: dict[str, str] | None = None) -> bool:
    """Whether matplotlib's own config and cache folders can be written (as it decides)."""
    env = os.environ if environ is None else environ
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        return False
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib"
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"
    return _creatable(config) and _creatable(cache)


@contextlib.contextmanager
def matplotlib_config_dir() -> Iterator[Path | None]:
    """Inside the block, MPLCONFIGDIR is a temporary folder if the user set none and
    matplotlib's defaults cannot be written; the folder is removed after it. Yields that
    folder, or None when nothing was changed."""
    if os.environ.get("MPLCONFIGDIR") or defaults_writable():
        yield None
        return
    try:
        folder = Path(tempfile.mkdtemp(prefix="ifcn-matplotlib-"))
    except OSError:  # no writable temporary folder either: matplotlib will say so if it matters
        yield None
        return
    os.environ["MPLCONFIGDIR"] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop("MPLCONFIGDIR", None)
        shutil.rmtree(folder, ignore_errors=True)
