"""Checkpoints: written atomically, found again after a crash, checked against the config.

A checkpoint is a dict (torchvision references' habit): model, optimizer, lr_scheduler,
iteration, config, RNG states (and the AMP scaler), the log's state, and ``kind``, the command
that wrote it; model_final.pt holds only kind, model, config and iteration (and what its
trainer adds). It holds only tensors, numbers, strings, lists and dicts, and every checkpoint
is read with ``torch.load(weights_only=True)``, so that a file never runs code.
`validate` is the one check of this file kind, run wherever a checkpoint enters a stage.
A checkpoint is saved to a temporary name (``.model_0000100.pt.<random>.tmp``, which `PATTERN`
does not match) and renamed, so a file under its final name is always complete;
`latest_checkpoint` still load-tests the candidates newest first and skips any it cannot read
(a file truncated by a full disk or by hand).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from ifcn.atomic import atomic_path
from ifcn.config import RESUME_NEUTRAL
from ifcn.errors import IfcnError

PATTERN = re.compile(r"^model_(\d{7})\.pt$")
# temporaries of the run folder's writers: checkpoints, model_final.pt, the CSV logs
TEMPORARY = re.compile(r"^\.(model_(\d{7}|final)\.pt|\w+_log\.csv)\..+\.tmp$")

# The `kind` entry of a checkpoint: which command wrote it, as the messages name it.
PROPOSAL_MODEL = "ifcn-proposal-model"
CLASSIFIER = "ifcn-classifier"
KINDS = {
    PROPOSAL_MODEL: "a proposal model of `ifcn train`",
    CLASSIFIER: "a classifier of `ifcn classify train`",
}


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"model_{iteration:07d}.pt"


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save to ``path`` through a temporary file in the same directory, flushed to disk.

    A failed write (a full disk, a quota) is an IfcnError naming ``path``; the temporary file
    is gone and an older file under ``path`` is left as it was.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                # torch reports a failed write as "unexpected pos"; the cause is the OSError
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise IfcnError(f"cannot write checkpoint: {exc.strerror or exc}", path) from None
    _fsync_directory(path.parent)
    return path


class _RecordingWriter:
    """A file's write/flush that keeps the OSError a write raised, which torch.save hides."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


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


def load(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    kind: str | None = None,
    resumable: bool = False,
) -> dict:
    """Load a checkpoint and `validate` it; every problem is an IfcnError naming the file."""
    path = Path(path)
    state = _read(path, map_location)
    validate(state, path, kind, resumable)
    return state


class UnreadableCheckpoint(IfcnError):
    """A checkpoint file that cannot be read at all (truncated, empty, not a torch file)."""


def _read(path: Path, map_location: str | torch.device) -> object:
    """``torch.load(weights_only=True)``: a file that holds anything but tensors, numbers,
    strings, lists and dicts is refused before any of it runs (a pickle can run any code)."""
    if not path.is_file():
        raise IfcnError("checkpoint not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on sparse tensors: refused below
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise IfcnError(
            "holds Python objects that a safe load refuses (a file of another program, or of "
            "an ifcn before checkpoints held only tensors, numbers and text): retrain, or "
            "convert it with torch.load(weights_only=False) only if you trust where it came from",
            path,
        ) from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnreadableCheckpoint(
            f"cannot read checkpoint ({type(exc).__name__}: {first})", path
        ) from None


def validate(state: object, path: str | Path, kind: str | None = None, resumable: bool = False):
    """Check a loaded checkpoint before anything uses it (the one validator of this file kind).

    Every checkpoint holds ``model`` (a state dict of finite tensors) and ``config`` (with its
    ``model`` section); its ``kind`` says which command wrote it. ``kind`` given: it must be
    that one. ``resumable``: it must hold what `--resume` continues from (optimizer,
    lr_scheduler, iteration), which a final model_final.pt does not.
    """
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise IfcnError("not an ifcn checkpoint (no 'model' state dict)", path)
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise IfcnError("not an ifcn checkpoint (no 'config' with a 'model' section)", path)
    found = kind_of(state)
    if found not in KINDS:
        raise IfcnError(f"unknown checkpoint kind {found!r}", path)
    if kind is not None and found != kind:
        raise IfcnError(f"{KINDS[found]}, not {KINDS[kind]}", path)
    iteration = state.get("iteration")
    if iteration is not None and (type(iteration) is not int or iteration < 0):
        raise IfcnError(f"iteration {iteration!r} is not a count of steps", path)
    if resumable:
        if "optimizer" not in state and "lr_scheduler" not in state:
            raise IfcnError(
                "a final model (weights only), not a training checkpoint: --resume takes a "
                "file of the run's checkpoints/ folder (checkpoints/model_NNNNNNN.pt) or auto",
                path,
            )
        for key, kinds in (("optimizer", dict), ("lr_scheduler", dict), ("iteration", int)):
            if not isinstance(state.get(key), kinds):
                raise IfcnError(f"training checkpoint without a valid '{key}' entry", path)
        optimizer = state["optimizer"]
        if not isinstance(optimizer.get("param_groups"), list) or not isinstance(
            optimizer.get("state"), dict
        ):
            raise IfcnError("training checkpoint whose optimizer state is malformed", path)
        # a NaN momentum would turn the first step's weights NaN, and the run would then name
        # this file as its last good checkpoint
        for index, values in optimizer["state"].items():
            for key, value in values.items() if isinstance(values, dict) else ():
                problem = _tensor_problem(value) if isinstance(value, torch.Tensor) else None
                if problem is not None:
                    raise IfcnError(f"optimizer state {key} of parameter {index} {problem}", path)
    for name, tensor in state["model"].items():
        if not isinstance(tensor, torch.Tensor):
            raise IfcnError(f"model entry {name!r} is not a tensor", path)
        problem = _tensor_problem(tensor)
        if problem is not None:
            raise IfcnError(f"model entry {name!r} {problem}", path)


def _tensor_problem(tensor: torch.Tensor) -> str | None:
    """What keeps a tensor from being used as values: none (meta), sparse, not finite."""
    if tensor.is_meta:
        return "is a meta tensor, which holds no values"
    if tensor.layout != torch.strided:
        return f"is a {str(tensor.layout).removeprefix('torch.')} tensor, not a dense one"
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return "is not finite"
    return None


def kind_of(state: dict) -> str:
    """Which command wrote a checkpoint; files of `ifcn train` before kinds existed have none."""
    return state.get("kind", PROPOSAL_MODEL)


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Periodic checkpoints of a run, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def load_latest(
    out_dir: str | Path, kind: str | None = None, resumable: bool = False
) -> tuple[Path, dict] | None:
    """The newest checkpoint that can be read, validated, with its contents, or None.

    A file that cannot be read (truncated by a full disk or by hand) is passed over for the
    one before it; one that a safe load refuses (a planted pickle) or that fails `validate`
    (another command's checkpoint in this folder) is an error, since going back past it would
    silently start another run.
    """
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = _read(path, "cpu")
        except UnreadableCheckpoint:
            continue
        validate(state, path, kind, resumable)
        return path, state
    return None


def latest_checkpoint(out_dir: str | Path, kind: str | None = None) -> Path | None:
    """The path of the newest checkpoint that loads, or None."""
    found = load_latest(out_dir, kind)
    return None if found is None else found[0]


def prune(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints."""
    for path in list_checkpoints(out_dir)[:-keep]:
        path.unlink(missing_ok=True)


def check_compatible(state: dict, config: dict, path: str | Path) -> None:
    """Refuse weights of another command or architecture with a message that says what differs.

    The check of every proposal-model checkpoint that enters a stage (train's resume,
    `load_model` for infer and viz), after `validate`.
    """
    found = kind_of(state)
    if found != PROPOSAL_MODEL:
        raise IfcnError(f"{KINDS.get(found, found)}, not {KINDS[PROPOSAL_MODEL]}", path)
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


def training_difference(
    saved: dict,
    current: dict,
    sections: tuple[str, ...] = ("model", "train"),
    neutral: tuple[str, ...] = RESUME_NEUTRAL,
) -> str | None:
    """The first setting of ``sections`` in which two configs differ ("train.lr 0.01 -> 0.001").

    `--resume auto` continues *this* run; a checkpoint written under other settings belongs to
    another run (a config edited between two workflow runs) and must not be continued silently.
    Keys in ``neutral`` may differ.
    """
    for section in sections:
        theirs, ours = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(theirs) | set(ours)):
            if key not in neutral and theirs.get(key) != ours.get(key):
                return f"{section}.{key} {theirs.get(key)!r} -> {ours.get(key)!r}"
    return None


def other_settings_error(difference: str, path: str | Path) -> IfcnError:
    """The refusal of `--resume auto` to continue a checkpoint written under other settings."""
    path = Path(path)
    return IfcnError(
        f"--resume auto: this checkpoint was written under other settings ({difference}); to "
        f"start over delete {path.parent} or choose another --out, to go on under the new "
        f"settings pass --resume {path}",
        path,
    )
