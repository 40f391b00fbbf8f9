"""The training loop both trainers share (detectron2's engine/train_loop.py, DETR's engine).

`Trainer` runs the steps and calls its hooks (ifcn.training.hooks) around them; `fit` gives it
the hooks every ifcn training has. Each trainer keeps only its builders (model, optimiser,
dataset, the loss of one sample, what its checkpoints hold besides, its log's columns) and its
CLI (torchvision references' train.py/engine.py split).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from ifcn.errors import IfcnError
from ifcn.training.distributed import all_reduce_mean, describe
from ifcn.training.hooks import (
    Checkpointer,
    HookBase,
    LRScheduler,
    PeriodicWriter,
    ProgressBar,
    StopOnSigterm,
)
from ifcn.training.log import LogFormat, TrainLog
from ifcn.training.run_folder import Run
from ifcn.training.sampler import IterationSampler, build_loader

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


class Trainer:
    """Steps ``start_iter..max_iter``, one sample of ``loader`` each, with hooks around them.

    What hooks read: ``iter`` (steps done), ``max_iter``, ``completed``, ``step_values`` (the
    step's losses and timings; hooks add to it, e.g. "lr") and ``logged`` (the means of the log
    row written at this step, else None).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        loader: Iterable,
        start_iter: int,
        max_iter: int,
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.loader, self.scaler = loader, scaler
        self.start_iter = self.iter = start_iter
        self.max_iter = max_iter
        self.completed = False
        self.step_values: dict[str, Any] = {}
        self.logged: dict[str, float] | None = None
        self.hooks: list[HookBase] = []

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def train(self) -> None:
        """Every hook's ``after_train`` runs however the loop ends (they close files and put
        back signal handlers); the first of their errors is raised after a complete loop."""
        self.iter, self.completed = self.start_iter, False
        self.model.train()
        for hook in self.hooks:
            hook.before_train()
        try:
            tick = time.perf_counter()
            for sample in self.loader:
                data_seconds = time.perf_counter() - tick
                for hook in self.hooks:
                    hook.before_step()
                losses = train_one_step(
                    self.model, self.loss_fn, sample, self.iter, self.optimizer, self.scaler
                )
                self.iter += 1
                self.step_values = losses | {
                    "data_seconds": data_seconds,
                    "seconds": time.perf_counter() - tick,
                }
                for hook in self.hooks:
                    hook.after_step()
                tick = time.perf_counter()
            self.completed = True
        finally:
            errors = []
            for hook in self.hooks:
                try:
                    hook.after_train()
                except Exception as exc:  # the others must still clean up
                    errors.append(exc)
            if errors and self.completed:
                raise errors[0]


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataset: Dataset,
    settings: Mapping[str, Any],
    run: Run,
    *,
    log: LogFormat,
    extras: Mapping[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Train ``model`` for ``settings["iters"]`` steps; return the path of model_final.pt.

    ``settings`` is the trainer's config section (iters, seed, workers, log_period,
    checkpoint_period, keep_checkpoints, tensorboard); ``run`` the locked run folder with the
    checkpoint to resume; ``extras`` go into every checkpoint and model_final.pt (kind,
    config, ...). The standard hooks: lr schedule, log (+ TensorBoard), progress, checkpoints,
    SIGTERM. Bad input and faults are IfcnError.
    """
    info, device, out_dir = run.info, run.device, run.out_dir
    total = settings["iters"]
    train_log = TrainLog(
        out_dir / log.name,
        log.columns,
        enabled=info.is_main,
        tensorboard=out_dir / "tensorboard" if settings.get("tensorboard") else None,
    )
    checkpointer = Checkpointer(
        out_dir, model, optimizer, scheduler, train_log,
        period=settings["checkpoint_period"], keep=settings["keep_checkpoints"],
        extras=extras, info=info, device=device, scaler=scaler,
    )  # fmt: skip
    start = 0
    if run.resume is not None:
        start = checkpointer.resume(run.resume.path, run.resume.state, total)

    if info.distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = IterationSampler(
        len(dataset), start, total, settings["seed"], info.rank, info.world_size
    )
    loader = build_loader(dataset, sampler, settings["workers"], device)
    trainer = Trainer(model, loss_fn, optimizer, loader, start, total, scaler)
    trainer.register_hooks(
        [
            LRScheduler(scheduler),
            PeriodicWriter(train_log, settings["log_period"], device),
            ProgressBar(log.desc, log.postfix, run.show_progress and info.is_main),
            checkpointer,
            StopOnSigterm(checkpointer, device),
        ]
    )
    if info.is_main and run.show_progress:
        print(_announcement(log.desc, run, start, total), file=sys.stderr)
    try:
        trainer.train()
    except FloatingPointError as exc:
        raise IfcnError(
            f"{exc} at iteration {trainer.iter + 1}; the weights were not updated; "
            f"last good checkpoint: {checkpointer.last_good or 'none'}",
            out_dir,
        ) from None
    return out_dir / "model_final.pt"


def _announcement(desc: str, run: Run, start: int, total: int) -> str:
    """The line that starts a training: processes, device, steps, and what it resumes."""
    notes = []
    if run.resume is not None:
        notes.append(f"resuming from {run.resume.path} at iteration {start}")
        saved_world = run.resume.state.get("world_size", run.info.world_size)
        if saved_world != run.info.world_size:
            notes.append(
                f"the checkpoint was written by {saved_world} processes, this run has "
                f"{run.info.world_size}: the image order differs from an uninterrupted run"
            )
    return (
        f"ifcn {desc}: {run.info.world_size} process(es) x 1 image per step on "
        f"{describe(run.device)}, steps {start}..{total}" + "".join(f"; {n}" for n in notes)
    )
