"""The hooks around the loop: the lr schedule, checkpoints and the stop SIGTERM requests."""

from __future__ import annotations

import io
import os
import signal
import warnings

import pandas as pd
import pytest
import torch
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR, SequentialLR

from ifcn.errors import IfcnError
from ifcn.training import checkpoint
from ifcn.training.hooks import build_lr_lambda, lr_scheduler
from tests.training import toy


def _lrs(scheduler, steps: int) -> list[float]:
    """The lr of each of ``steps`` steps, read before the step as the log reads it."""
    optimizer = scheduler.optimizer
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=lr)


def _settings(**values) -> dict:
    return {"lr_step": 0.8, "lr_gamma": 0.1, "warmup_iters": 0} | values


def test_lr_is_the_warmup_ramp_times_the_step_at_every_iteration():
    # 8 steps, warm-up over 4, the step at 0.75·8 = 6: the boundaries of both, written out
    optimizer = _optimizer(0.1)
    schedule = lr_scheduler(optimizer, _settings(iters=8, warmup_iters=4, lr_step=0.75))
    factors = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.1]
    assert _lrs(schedule, 8) == [0.1 * f for f in factors]
    # no warm-up: the paper's step alone
    schedule = lr_scheduler(_optimizer(0.01), _settings(iters=10, lr_step=0.5))
    assert _lrs(schedule, 10) == [0.01] * 5 + [0.01 * 0.1] * 5
    # a step (at round(0.8·4) = 3) inside the warm-up (the classifier's 50 warm-up steps in
    # a short run): both apply
    factor = build_lr_lambda(_settings(iters=4, warmup_iters=50))
    assert [factor(i) for i in range(4)] == [1 / 50, 2 / 50, 3 / 50, 4 / 50 * 0.1]


def test_torch_linear_and_multistep_schedulers_are_not_the_schedule():
    """Why the schedule is a LambdaLR of one factor and not torch's LinearLR + MultiStepLR."""
    warnings.simplefilter("ignore")  # torch's notes on SequentialLR's use of step(epoch)
    # SequentialLR hands over to MultiStepLR when the warm-up ends, so it cannot decay inside
    # the warm-up: the classifier's default of 50 warm-up steps in a 4-step run (config/tiny)
    # would keep lr 10x too high after the step
    settings = _settings(iters=4, warmup_iters=50)
    optimizer = _optimizer(0.01)
    sequential = SequentialLR(
        optimizer,
        [LinearLR(optimizer, 1 / 50, 1.0, 49), MultiStepLR(optimizer, [3 - 50], 0.1)],
        milestones=[50],
    )
    ours = _lrs(lr_scheduler(_optimizer(0.01), settings), 4)
    theirs = _lrs(sequential, 4)
    assert theirs[3] == pytest.approx(ours[3] * 10)
    # ChainedScheduler can decay inside it, but LinearLR's recursive form is not the exact lr
    # of each step (off in the last bits during the warm-up; float32 weights mostly round it
    # away), and today's checkpoints, whose lr_scheduler state is LambdaLR's, would not resume
    settings = _settings(iters=6, warmup_iters=3, lr_step=0.5)
    optimizer = _optimizer(0.01)
    chained = ChainedScheduler(
        [LinearLR(optimizer, 1 / 3, 1.0, 2), MultiStepLR(optimizer, [3], 0.1)]
    )
    ours_scheduler = lr_scheduler(_optimizer(0.01), settings)
    ours = _lrs(ours_scheduler, 6)
    theirs = _lrs(chained, 6)
    assert ours[2] == 0.01 and theirs[2] == 0.009999999999999998
    assert theirs == pytest.approx(ours, rel=1e-12)
    with pytest.raises(KeyError):
        chained.load_state_dict(ours_scheduler.state_dict())


def test_a_resumed_schedule_continues_with_the_very_same_lr():
    settings = _settings(iters=12, warmup_iters=5, lr_step=0.5)
    straight = _lrs(lr_scheduler(_optimizer(0.02), settings), 12)
    first = lr_scheduler(_optimizer(0.02), settings)
    assert _lrs(first, 4) == straight[:4]
    saved = io.BytesIO()
    torch.save(
        {"lr_scheduler": first.state_dict(), "optimizer": first.optimizer.state_dict()}, saved
    )
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    # as a resume does it: the schedule is built first, then both states are loaded (the
    # optimiser's holds the lr of the next step, which building a schedule would overwrite)
    optimizer = _optimizer(0.02)
    resumed = lr_scheduler(optimizer, settings)
    optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["lr_scheduler"])
    assert _lrs(resumed, 8) == straight[4:]


def test_checkpoints_are_pruned_to_the_newest_and_the_last_step_is_always_saved(tmp_path):
    out = tmp_path / "run"
    toy.fit(
        out, settings=toy.SETTINGS | {"iters": 7, "checkpoint_period": 2, "keep_checkpoints": 2}
    )
    assert [p.name for p in checkpoint.list_checkpoints(out)] == [
        "model_0000006.pt",
        "model_0000007.pt",
    ]
    state = torch.load(checkpoint.checkpoint_path(out, 7), weights_only=True)
    final = torch.load(out / "model_final.pt", weights_only=True)
    for key, value in final["model"].items():
        assert torch.equal(value, state["model"][key]), key


def _terminated_at(step: int):
    def loss_fn(model, sample, iteration):
        if iteration == step - 1:  # during the step that ends at iteration ``step``
            os.kill(os.getpid(), signal.SIGTERM)
        return toy.squared_error(model, sample, iteration)

    return loss_fn


def test_sigterm_on_a_checkpoint_step_names_that_checkpoint_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    with pytest.raises(IfcnError) as raised:
        toy.fit(out, loss_fn=_terminated_at(3))
    assert str(raised.value) == (
        f"{out}: stopped by SIGTERM at iteration 3; checkpoint "
        f"{checkpoint.checkpoint_path(out, 3)} written; rerun with --resume auto to continue"
    )
    assert checkpoint.list_checkpoints(out) == [checkpoint.checkpoint_path(out, 3)]
    assert not (out / "model_final.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_between_checkpoints_writes_the_steps_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(IfcnError, match="stopped by SIGTERM at iteration 4; checkpoint"):
        toy.fit(out, loss_fn=_terminated_at(4))
    assert checkpoint.list_checkpoints(out) == [
        checkpoint.checkpoint_path(out, 3),
        checkpoint.checkpoint_path(out, 4),
    ]
    assert torch.load(checkpoint.checkpoint_path(out, 4), weights_only=True)["iteration"] == 4


def test_sigterm_during_the_last_step_lets_the_run_finish(tmp_path):
    # a run that stopped at its last iteration would look complete to --resume auto
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    final = toy.fit(out, loss_fn=_terminated_at(6))
    assert final.is_file() and torch.load(final, weights_only=True)["iteration"] == 6
    assert list(pd.read_csv(out / "train_log.csv")["iteration"]) == [1, 2, 3, 4, 5, 6]
    assert signal.getsignal(signal.SIGTERM) == before
