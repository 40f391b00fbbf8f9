"""What happens around the steps of a training (detectron2's engine/hooks.py): the lr schedule,
the log and progress, checkpoints, and the stop that SIGTERM requests.

Each hook is called by `engine.Trainer` before and after the training and after every step, in
the order the trainer was given them; `engine.fit` gives them as [LRScheduler, PeriodicWriter,
ProgressBar, Checkpointer, StopOnSigterm], so that a checkpoint holds the log row of its step
and a stop finds the step's checkpoint already written.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ifcn.errors import IfcnError
from ifcn.progress import progress_bar
from ifcn.signals import SignalStop
from ifcn.training import checkpoint
from ifcn.training.distributed import DistInfo, broadcast_flag, run_on_main
from ifcn.training.log import TrainLog

if TYPE_CHECKING:
    from ifcn.training.engine import Trainer


class HookBase:
    """Override any of the four; ``self.trainer`` is set when the trainer registers the hook.

    ``after_train`` runs however the training ends (an error, a stop); ``trainer.completed``
    says whether every step ran.
    """

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


def build_lr_lambda(settings: Mapping[str, Any]) -> Callable[[int], float]:
    """Factor of lr at step i: the paper's step (× lr_gamma from lr_step·iters on) times an
    optional linear warm-up ((i + 1) / warmup_iters for the first steps).

    torch's LinearLR + MultiStepLR were measured against it (tests/training/test_hooks.py):
    SequentialLR cannot decay inside the warm-up (the classifier's default warm-up of 50 steps
    is longer than a short run), and LinearLR's recursive form differs in the last bits of lr
    during the warm-up, so a run would no longer reproduce its earlier weights bit for bit.
    As a pure function of the step, the factor also resumes exactly.
    """
    step_at = int(round(settings["lr_step"] * settings["iters"]))
    warmup = settings["warmup_iters"]
    gamma = settings["lr_gamma"]

    def factor(iteration: int) -> float:
        ramp = min(1.0, (iteration + 1) / warmup) if warmup else 1.0
        return ramp * (gamma if iteration >= step_at else 1.0)

    return factor


def lr_scheduler(
    optimizer: torch.optim.Optimizer, settings: Mapping[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of both trainers (``settings``: their config section)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(settings))


class LRScheduler(HookBase):
    """Steps the schedule after every step; the step's own lr goes to the log as "lr"."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler):
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.trainer.step_values["lr"] = self.scheduler.optimizer.param_groups[0]["lr"]
        self.scheduler.step()


class PeriodicWriter(HookBase):
    """Adds every step's values to the log; writes a row every ``period`` steps and at the end."""

    def __init__(self, log: TrainLog, period: int, device: torch.device):
        self.log, self.period, self.device = log, period, device

    def before_train(self) -> None:
        run_on_main(lambda: self.log.start(self.trainer.iter), self.device)

    def after_step(self) -> None:
        trainer = self.trainer
        values = dict(trainer.step_values)
        lr = values.pop("lr")
        self.log.update(values)
        trainer.logged = None
        if trainer.iter % self.period == 0 or trainer.iter == trainer.max_iter:
            trainer.logged = self.log.write(trainer.iter, lr, self.device)

    def after_train(self) -> None:
        self.log.close()


class ProgressBar(HookBase):
    """A progress bar on rank 0 whose labels show the last logged means (label -> column)."""

    def __init__(self, desc: str, postfix: Mapping[str, str], enabled: bool):
        self.desc, self.postfix, self.enabled = desc, postfix, enabled
        self.bar = None

    def before_train(self) -> None:
        self.bar = progress_bar(
            total=self.trainer.max_iter,
            initial=self.trainer.iter,
            disable=not self.enabled,
            desc=self.desc,
            dynamic_ncols=True,
        )

    def after_step(self) -> None:
        logged = self.trainer.logged
        if logged is not None:
            self.bar.set_postfix(
                {label: f"{logged.get(key, 0.0):.3g}" for label, key in self.postfix.items()}
            )
        self.bar.update(1)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _weights_finite(model: nn.Module) -> bool:
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class Checkpointer(HookBase):
    """Checkpoints every ``period`` steps (the newest ``keep`` kept), one at the last step, and
    model_final.pt; `resume` puts a checkpoint's state back in place. Rank 0 alone writes.

    A checkpoint holds model, optimizer, lr_scheduler, scaler, iteration, world_size, RNG states
    and the log's state, plus ``extras`` (kind, config, ...), which model_final.pt holds too.
    """

    def __init__(
        self,
        out_dir: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        log: TrainLog,
        *,
        period: int,
        keep: int,
        extras: Mapping[str, Any],
        info: DistInfo,
        device: torch.device,
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.out_dir, self.model, self.log = out_dir, model, log
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.period, self.keep, self.extras = period, keep, dict(extras)
        self.info, self.device = info, device
        self.last_good: Path | None = None
        self.saved_at: int | None = None

    def resume(self, path: Path, state: dict, total: int) -> int:
        """Load a checkpoint's weights and training state; returns its iteration."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["lr_scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IfcnError(f"checkpoint does not fit this model ({first})", path) from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("log"):
            self.log.load_state_dict(state["log"], self.info.rank, self.info.world_size)
        iteration = int(state["iteration"])
        if iteration > total:
            raise IfcnError(
                f"checkpoint is at iteration {iteration}, beyond this run's {total} iterations",
                path,
            )
        self.last_good, self.saved_at = path, iteration
        return iteration

    def before_train(self) -> None:
        def create() -> None:
            try:
                (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise IfcnError(
                    f"cannot create the run folder: {exc.strerror}", self.out_dir
                ) from None

        run_on_main(create, self.device)

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if iteration % self.period == 0 and iteration < self.trainer.max_iter:
            self.save(iteration)

    def after_train(self) -> None:
        if not self.trainer.completed:
            return
        self.checkpoint_now()
        weights = {"model": self.model.state_dict(), "iteration": self.trainer.iter}
        final = self.out_dir / "model_final.pt"
        run_on_main(lambda: checkpoint.save_atomic(weights | self.extras, final), self.device)

    def checkpoint_now(self) -> Path:
        """The checkpoint of the current step: written unless it already is."""
        iteration = self.trainer.iter
        return self.last_good if self.saved_at == iteration else self.save(iteration)

    def save(self, iteration: int) -> Path:
        """Rank 0 writes the checkpoint of ``iteration``; no rank goes on until it exists."""
        if not _weights_finite(self.model):
            raise IfcnError(
                f"weights are not finite after iteration {iteration}; not saved; "
                f"last good checkpoint: {self.last_good or 'none'}",
                self.out_dir,
            )
        path = checkpoint.checkpoint_path(self.out_dir, iteration)
        log = self.log.state_dict()  # every rank: it gathers their sums

        def write() -> None:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "iteration": iteration,
                "world_size": self.info.world_size,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                },
                "log": log,
            }
            checkpoint.save_atomic(state | self.extras, path)
            checkpoint.prune(self.out_dir, self.keep)

        run_on_main(write, self.device)
        self.last_good, self.saved_at = path, iteration
        return path


class StopRequest:
    """Turns SIGTERM (SLURM preemption) into a flag checked after every step."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


class StopOnSigterm(HookBase):
    """SIGTERM on any rank: every rank finishes its step, the step is checkpointed, and all
    stop with an error that says how to continue (exit status 143, as any stage stopped by
    SIGTERM). A SIGTERM during the last step lets the run finish (model_final.pt is one write
    away), so that a complete run never looks stopped."""

    def __init__(self, checkpointer: Checkpointer, device: torch.device):
        self.checkpointer, self.device = checkpointer, device
        self.stop = StopRequest()
        self.previous = None
        self.installed = False

    def before_train(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self.stop)
            self.installed = True

    def after_step(self) -> None:
        requested = broadcast_flag(self.stop.requested, self.device)
        if requested and self.trainer.iter < self.trainer.max_iter:
            path = self.checkpointer.checkpoint_now()
            raise SignalStop(
                f"stopped by SIGTERM at iteration {self.trainer.iter}; checkpoint {path} "
                "written; rerun with --resume auto to continue",
                self.checkpointer.out_dir,
            )

    def after_train(self) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous or signal.SIG_DFL)
            self.installed = False
