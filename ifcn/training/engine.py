"""The training loop both trainers share, apart from their CLIs and models (DETR's engine).

`fit` owns what `ifcn train` and `ifcn classify train` have in common — resume, DDP, the
sampler and DataLoader, the CSV log, checkpoints, SIGTERM, non-finite losses, progress — and
each trainer keeps only its builders (model, optimiser, dataset, the loss of one sample, what
its checkpoints hold besides) and its CLI (torchvision references' train.py/engine.py split).
"""

from __future__ import annotations

import csv
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from ifcn.atomic import atomic_path
from ifcn.errors import IfcnError
from ifcn.progress import progress_bar
from ifcn.training import checkpoint
from ifcn.training.distributed import (
    DistInfo,
    all_reduce_mean,
    broadcast_flag,
    describe,
    run_on_main,
)

LOG_COLUMNS = [
    "iteration",
    "loss",
    "loss_objectness",
    "loss_mask",
    "lr",
    "num_pos",
    "num_neg",
    "data_seconds",
    "seconds",
]


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """Seed of everything random in one step of one rank: a pure function of the three."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0])


class IterationSampler(Sampler):
    """Keys (image index, step seed) for steps ``start..total`` of one rank.

    It plays the role of DistributedSampler with ``set_epoch`` in an epoch loop, for a training
    counted in iterations: step i of rank r takes position p = i·W + r of an endless sequence
    of epochs, each a permutation of the images seeded by (seed, epoch). Every epoch visits each
    image exactly once across the W ranks, without DistributedSampler's padding (only a step
    that straddles the end of an epoch may hand two ranks the same image), and a resumed run
    continues the very same sequence mid-epoch, where DistributedSampler would restart its
    epoch. The step seed draws the sample's scale and flip; it is a pure function of
    (seed, i, r), so neither the number of DataLoader workers nor a restart changes a sample.
    """

    def __init__(
        self, num_images: int, start: int, total: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.num_images = num_images
        self.start, self.total = start, total
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, order = -1, None
        for iteration in range(self.start, self.total):
            position = iteration * self.world_size + self.rank
            if position // self.num_images != epoch:
                epoch = position // self.num_images
                order = torch.randperm(
                    self.num_images, generator=torch.Generator().manual_seed(self.seed + epoch)
                )
            yield int(order[position % self.num_images]), step_seed(self.seed, iteration, self.rank)


def build_lr_lambda(train_cfg: dict):
    """Step schedule of the paper (with an optional linear warm-up)."""
    step_at = int(round(train_cfg["lr_step"] * train_cfg["iters"]))
    warmup = train_cfg["warmup_iters"]
    gamma = train_cfg["lr_gamma"]

    def factor(iteration: int) -> float:
        ramp = min(1.0, (iteration + 1) / warmup) if warmup else 1.0
        return ramp * (gamma if iteration >= step_at else 1.0)

    return factor


# (model, sample, iteration) -> losses: "loss" (with its graph) and values to log.
LossFn = Callable[[nn.Module, dict, int], dict[str, Tensor]]


def train_one_step(
    model: nn.Module,
    loss_fn: LossFn,
    sample: dict,
    iteration: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Tensor]:
    """The losses of one sample, then one optimiser step; returns them detached.

    Raises FloatingPointError (on every rank, so that all stop together) when the loss of any
    rank is not finite, before any update.
    """
    losses = loss_fn(model, sample, iteration)
    loss = losses["loss"]
    local_finite = torch.isfinite(loss).float().reshape(1)
    if all_reduce_mean(local_finite).item() < 1.0:
        if local_finite.item() < 1.0:
            raise FloatingPointError(f"loss is {loss.item()}")
        raise FloatingPointError("the loss of another process is not finite")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return {key: value.detach() for key, value in losses.items()}


class TrainLog:
    """A training CSV log: one row per logging period with period means reduced over ranks.

    ``columns`` start with "iteration" and include "lr" (train_log.csv by default; the
    classifier logs its own columns). With ``tensorboard`` (a folder) the same values go to
    TensorBoard scalars too, tagged by column, at the row's iteration.
    """

    def __init__(
        self,
        path: Path,
        enabled: bool = True,
        columns: Sequence[str] = LOG_COLUMNS,
        tensorboard: Path | None = None,
    ):
        self.path = path
        self.enabled = enabled
        self.columns = list(columns)
        self.tensorboard = tensorboard
        self.writer = None
        self.sums: dict[str, float] = {}
        self.count = 0

    def start(self, iteration: int) -> None:
        """Drop the rows a killed run logged after its checkpoint: the resumed run redoes them."""
        if not self.enabled:
            return
        rows = []
        try:
            if self.path.exists():
                with open(self.path, newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)
        except OSError as exc:
            raise IfcnError(f"cannot write the log: {exc.strerror or exc}", self.path) from None
        except (KeyError, ValueError, csv.Error):
            raise IfcnError(
                "not a training log: a row without an iteration number", self.path
            ) from None
        if self.tensorboard is not None:
            # imported here: TensorBoard is optional and slow to import
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of this step and after, of a killed run, are dropped as above
            self.writer = SummaryWriter(str(self.tensorboard), purge_step=iteration + 1)

    def update(self, values: dict[str, float | Tensor]) -> None:
        """Add one step's values; tensors are fetched together (one device sync per step)."""
        keys = list(values)
        tensors = [k for k in keys if isinstance(values[k], Tensor)]
        stacked = torch.stack([values[k].float() for k in tensors]).tolist() if tensors else []
        fetched = dict(zip(tensors, stacked, strict=True))
        for key in keys:
            value = fetched[key] if key in fetched else values[key]
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def write(self, iteration: int, lr: float, device: torch.device) -> dict[str, float]:
        """Reduce the period's means over ranks and append them (rank 0); returns them."""
        keys = sorted(self.sums)
        local = torch.tensor([self.sums[k] / max(self.count, 1) for k in keys], device=device)
        means = dict(zip(keys, all_reduce_mean(local).tolist(), strict=True))
        self.sums, self.count = {}, 0
        if self.enabled:
            values = {k: lr if k == "lr" else means.get(k, 0.0) for k in self.columns[1:]}
            row = {"iteration": iteration} | {k: f"{v:.6g}" for k, v in values.items()}
            try:
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, self.columns).writerow(row)
            except OSError as exc:
                raise IfcnError(f"cannot write the log: {exc.strerror or exc}", self.path) from None
            if self.writer is not None:
                for key, value in values.items():
                    self.writer.add_scalar(key, value, iteration)
        return means

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class StopRequest:
    """Turns SIGTERM (SLURM preemption) into a flag checked after every step."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


def ignore_sigterm(_worker_id: int) -> None:
    """DataLoader workers outlive a SIGTERM sent to the whole job, so the last step finishes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def output_folder(out_dir: str | Path) -> Path:
    """``--out`` as a folder; an existing file there is refused before any work."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise IfcnError("--out is an existing file, not a folder", out_dir)
    return out_dir


def worker_count(workers: int | None, configured: int) -> int:
    """DataLoader workers: ``--workers`` when given (0 or more), else the config's."""
    if workers is None:
        return configured
    if workers < 0:
        raise IfcnError(
            f"--workers must be 0 or more (0 loads in the training process), not {workers}"
        )
    return workers


class Resume(NamedTuple):
    """The checkpoint a run continues from and its validated contents."""

    path: Path
    state: dict


def resolve_resume(
    resume: str | None,
    out_dir: Path,
    info: DistInfo,
    device: torch.device,
    kind: str,
    check: Callable[[dict, Path, bool], None],
) -> Resume | None:
    """The checkpoint of ``--resume`` (a path, or ``auto``: the newest of ``out_dir``).

    Rank 0 alone chooses for ``auto``. Every checkpoint is validated as a training checkpoint
    of ``kind``, then ``check(state, path, auto)`` refuses one that does not fit the config
    (architecture, categories) and, for ``auto``, one written under other settings.
    """
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        state = checkpoint.load(path, kind=kind, resumable=True)
        check(state, path, False)
        return Resume(path, state)
    latest: dict[str, tuple[Path, dict] | None] = {}

    def choose() -> str | None:
        latest["found"] = checkpoint.load_latest(out_dir, kind, resumable=True)
        return None if latest["found"] is None else str(latest["found"][0])

    chosen = run_on_main(choose, device)
    if chosen is None:
        return None
    path = Path(chosen)
    found = latest.get("found")
    state = found[1] if found else checkpoint.load(path, kind=kind, resumable=True)
    check(state, path, True)
    return Resume(path, state)


def _weights_finite(model: nn.Module) -> bool:
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _load_training_state(
    resume: Resume,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> int:
    """Put a checkpoint's weights and optimiser state in place; returns its iteration."""
    state = resume.state
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IfcnError(f"checkpoint does not fit this model ({first})", resume.path) from None
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["iteration"])


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataset: Dataset,
    settings: Mapping[str, Any],
    out_dir: Path,
    info: DistInfo,
    device: torch.device,
    *,
    resume: Resume | None = None,
    workers: int | None = None,
    extras: Mapping[str, Any] | None = None,
    log_name: str = "train_log.csv",
    log_columns: Sequence[str] = LOG_COLUMNS,
    postfix: Mapping[str, str] = MappingProxyType({"loss": "loss"}),
    desc: str = "train",
    scaler: torch.amp.GradScaler | None = None,
    show_progress: bool = True,
    tensorboard: bool = False,
) -> Path:
    """Train ``model`` for ``settings["iters"]`` steps; return the path of model_final.pt.

    Everything both trainers share (torchvision's train.py/engine.py split): resuming
    ``resume``, DDP, the iteration sampler and DataLoader over ``dataset`` (keys (index, step
    seed)), the CSV log ``log_name`` with ``log_columns`` (and TensorBoard), checkpoints every
    ``checkpoint_period`` steps pruned to ``keep_checkpoints``, SIGTERM, non-finite losses and
    weights, progress. ``settings`` is the trainer's config section (iters, seed, log_period,
    checkpoint_period, keep_checkpoints, workers); ``loss_fn`` computes one sample's losses;
    ``extras`` are added to every checkpoint and to model_final.pt (kind, config, ...);
    ``postfix`` maps progress labels to log columns. Rank 0 alone writes. Bad input and
    faults are IfcnError.
    """
    total = settings["iters"]
    start = 0
    if resume is not None:
        start = _load_training_state(resume, model, optimizer, scheduler, scaler)
        if start > total:
            raise IfcnError(
                f"checkpoint is at iteration {start}, beyond this run's {total} iterations",
                resume.path,
            )
    extras = dict(extras or {})

    model_without_ddp = model
    if info.distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = IterationSampler(
        len(dataset), start, total, settings["seed"], info.rank, info.world_size
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=worker_count(workers, settings["workers"]),
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_sigterm,
        persistent_workers=False,
    )

    log = TrainLog(
        out_dir / log_name,
        enabled=info.is_main,
        columns=log_columns,
        tensorboard=out_dir / "tensorboard" if tensorboard else None,
    )

    def prepare() -> None:
        try:
            (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IfcnError(f"cannot create the run folder: {exc.strerror}", out_dir) from None
        log.start(start)

    run_on_main(prepare, device)
    last_good = resume.path if resume is not None else None
    saved_at = start if resume is not None else None

    def save(iteration: int) -> Path:
        """Rank 0 writes the checkpoint of ``iteration``; no rank goes on until it exists."""
        if not _weights_finite(model_without_ddp):
            raise IfcnError(
                f"weights are not finite after iteration {iteration}; not saved; "
                f"last good checkpoint: {last_good or 'none'}",
                out_dir,
            )
        path = checkpoint.checkpoint_path(out_dir, iteration)

        def write() -> None:
            state = {
                "model": model_without_ddp.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "iteration": iteration,
                "world_size": info.world_size,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                },
            }
            checkpoint.save_atomic(state | extras, path)
            checkpoint.prune(out_dir, settings["keep_checkpoints"])

        run_on_main(write, device)
        return path

    if info.is_main and show_progress:
        notes = [f"resuming from {resume.path} at iteration {start}"] if resume else []
        saved_world = resume.state.get("world_size", info.world_size) if resume else None
        if resume is not None and saved_world != info.world_size:
            notes.append(
                f"the checkpoint was written by {saved_world} processes, this run has "
                f"{info.world_size}: the image order differs from an uninterrupted run"
            )
        print(
            f"ifcn {desc}: {info.world_size} process(es) x 1 image per step on "
            f"{describe(device)}, steps {start}..{total}" + "".join(f"; {n}" for n in notes),
            file=sys.stderr,
        )

    stop = StopRequest()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    model.train()
    progress = progress_bar(
        total=total,
        initial=start,
        disable=not (show_progress and info.is_main),
        desc=desc,
        dynamic_ncols=True,
    )
    iteration = start
    try:
        tick = time.perf_counter()
        for sample in loader:
            data_seconds = time.perf_counter() - tick
            try:
                losses = train_one_step(model, loss_fn, sample, iteration, optimizer, scaler)
            except FloatingPointError as exc:
                raise IfcnError(
                    f"{exc} at iteration {iteration + 1}; the weights were not updated; "
                    f"last good checkpoint: {last_good or 'none'}",
                    out_dir,
                ) from None
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            iteration += 1
            log.update(
                losses | {"data_seconds": data_seconds, "seconds": time.perf_counter() - tick}
            )
            if iteration % settings["log_period"] == 0 or iteration == total:
                means = log.write(iteration, lr, device)
                progress.set_postfix(
                    {label: f"{means.get(key, 0.0):.3g}" for label, key in postfix.items()}
                )
            progress.update(1)
            if iteration % settings["checkpoint_period"] == 0 and iteration < total:
                last_good, saved_at = save(iteration), iteration
            if broadcast_flag(stop.requested, device):
                path = last_good if saved_at == iteration else save(iteration)
                raise IfcnError(
                    f"stopped by SIGTERM at iteration {iteration}; checkpoint {path} written; "
                    "rerun with --resume auto to continue",
                    out_dir,
                )
            tick = time.perf_counter()
        if saved_at != iteration:
            save(iteration)
        final = out_dir / "model_final.pt"
        weights = {"model": model_without_ddp.state_dict(), "iteration": iteration}
        run_on_main(lambda: checkpoint.save_atomic(weights | extras, final), device)
        return final
    finally:
        progress.close()
        log.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler or signal.SIG_DFL)
