"""Checkpoints: written atomically, found again after a crash, checked against the config.

A checkpoint is a dict (torchvision references' habit): model, optimizer, lr_scheduler,
iteration, config, RNG states (and the AMP scaler). It is saved to a temporary name
(``.model_0000100.pt.<random>.tmp``, which `PATTERN` does not match) and renamed, so a file under
its final name is always complete; `latest_checkpoint` still load-tests the candidates newest
first and skips any it cannot read (a file truncated by a full disk or by hand).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ifcn.atomic import atomic_path
from ifcn.errors import IfcnError

PATTERN = re.compile(r"^model_(\d{7})\.pt$")
# temporaries of the run folder's writers: checkpoints, model_final.pt, train_log.csv
TEMPORARY = re.compile(r"^\.(model_(\d{7}|final)\.pt|train_log\.csv)\..+\.tmp$")


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"model_{iteration:07d}.pt"


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save to ``path`` through a temporary file in the same directory, flushed to disk."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    _fsync_directory(path.parent)
    return path


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable, so a node crash cannot undo a checkpoint we reported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temporaries(out_dir: str | Path) -> list[Path]:
    """Delete temporary files a killed writer left behind in a run folder; returns them.

    Only for a run folder that no live process writes to (the start of a run).
    """
    out_dir = Path(out_dir)
    removed = []
    for folder in (out_dir, out_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.iterdir():
                if TEMPORARY.match(path.name):
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


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


def load_latest(out_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, with its contents, or None (for `--resume auto`)."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load(path)
        except IfcnError:
            continue
    return None


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The path of the newest checkpoint that loads, or None."""
    found = load_latest(out_dir)
    return None if found is None else found[0]


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


# Settings that change neither the weights nor the data order: a run may resume under new ones.
RESUME_NEUTRAL = ("workers", "log_period", "checkpoint_period", "keep_checkpoints")


def training_difference(saved: dict, current: dict) -> str | None:
    """The first model or train setting in which two configs differ ("train.lr 0.01 -> 0.001").

    `--resume auto` continues *this* run; a checkpoint written under other settings belongs to
    another run (a config edited between two workflow runs) and must not be continued silently.
    """
    for section in ("model", "train"):
        theirs, ours = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(theirs) | set(ours)):
            if section == "train" and key in RESUME_NEUTRAL:
                continue
            if theirs.get(key) != ours.get(key):
                return f"{section}.{key} {theirs.get(key)!r} -> {ours.get(key)!r}"
    return None
