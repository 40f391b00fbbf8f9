"""Checkpoints: written atomically, found again after a crash, checked against the config.

A checkpoint is a dict (torchvision references' habit): model, optimizer, lr_scheduler,
iteration, config, RNG states (and the AMP scaler). It is saved to a temporary name and renamed,
so a file under its final name is always complete; `latest_checkpoint` still load-tests the
candidates newest first and skips any it cannot read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ifcn.errors import IfcnError

PATTERN = re.compile(r"^model_(\d{7})\.pt$")


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"model_{iteration:07d}.pt"


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict; an unreadable or foreign file is an IfcnError naming it."""
    path = Path(path)
    if not path.is_file():
        raise IfcnError("checkpoint not found", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise IfcnError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise IfcnError("not an ifcn checkpoint (no 'model' and 'config' entries)", path)
    return state


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Periodic checkpoints of a run, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint that loads, or None (for `--resume auto`)."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            load(path)
        except IfcnError:
            continue
        return path
    return None


def prune(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints."""
    for path in list_checkpoints(out_dir)[:-keep]:
        path.unlink(missing_ok=True)


def check_compatible(state: dict, config: dict, path: str | Path) -> None:
    """Refuse weights of another architecture with a message that says what differs."""
    theirs = state["config"]["model"]
    ours = config["model"]
    for key in ("backbone", "head", "k", "m", "head_channels"):
        if theirs.get(key) != ours.get(key):
            raise IfcnError(
                f"checkpoint was trained with model.{key}={theirs.get(key)!r}, "
                f"the config asks for {ours.get(key)!r}",
                path,
            )
