"""The loop of both trainers (`Trainer`, `fit`) on a toy regression: cases callers rarely hit."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from torch import nn

from ifcn.errors import IfcnError
from ifcn.training import checkpoint
from ifcn.training.engine import Trainer
from ifcn.training.hooks import HookBase
from tests.training import toy


def test_checkpoints_and_the_final_model_carry_the_trainers_extras(tmp_path):
    final = toy.fit(tmp_path / "run")
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == [
        "model_0000003.pt",
        "model_0000006.pt",
    ]
    state = torch.load(checkpoint.checkpoint_path(tmp_path / "run", 3), weights_only=True)
    assert state["kind"] == "toy" and state["iteration"] == 3 and state["config"] == {"model": {}}
    assert {"model", "optimizer", "lr_scheduler", "rng", "world_size", "log"} <= state.keys()
    weights = torch.load(final, weights_only=True)
    assert weights.keys() == {"model", "iteration", "kind", "config"}
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log.columns) == list(toy.COLUMNS) and list(log["iteration"]) == [1, 2, 3, 4, 5, 6]
    assert log["lr"].tolist() == [0.05] * 3 + [0.005] * 3


def test_a_resume_at_the_last_iteration_trains_nothing_and_writes_the_final_model(tmp_path):
    out = tmp_path / "run"
    toy.fit(out)
    last = checkpoint.checkpoint_path(out, 6)
    before = last.stat().st_mtime_ns
    (out / "model_final.pt").unlink()
    final = toy.fit(out, resume=last)
    assert last.stat().st_mtime_ns == before  # not written again
    saved = torch.load(last, weights_only=True)["model"]
    for key, value in torch.load(final, weights_only=True)["model"].items():
        assert torch.equal(value, saved[key]), key


def test_a_checkpoint_beyond_the_run_is_refused(tmp_path):
    out = tmp_path / "run"
    toy.fit(out)
    with pytest.raises(IfcnError, match=r"iteration 6, beyond this run's 4 iterations"):
        toy.fit(
            tmp_path / "short",
            checkpoint.checkpoint_path(out, 6),
            settings=toy.SETTINGS | {"iters": 4},
        )


def test_progress_in_a_log_is_whole_lines(tmp_path, capsys):
    toy.fit(tmp_path / "run", show_progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert re.fullmatch(
        r"ifcn train: 1 process\(es\) x 1 image per step on cpu.*, steps 0..6", lines[0]
    )
    assert re.fullmatch(r"\S+ \S+ train: 100% 6/6 \[.*, loss=[0-9.e+-]+\]", lines[-1]), lines[-1]


class Recorder(HookBase):
    """Writes down every call it gets, as (name, hook call, steps done)."""

    def __init__(self, name: str, calls: list, fail_after_train: bool = False):
        self.name, self.calls, self.fail_after_train = name, calls, fail_after_train

    def before_train(self):
        self.calls.append((self.name, "before_train", self.trainer.iter))

    def before_step(self):
        self.calls.append((self.name, "before_step", self.trainer.iter))

    def after_step(self):
        self.calls.append((self.name, "after_step", self.trainer.iter))

    def after_train(self):
        self.calls.append((self.name, "after_train", self.trainer.completed))
        if self.fail_after_train:
            raise OSError("disk full")


def _trainer(steps, start=0, loss_fn=toy.squared_error) -> Trainer:
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    points = toy.Points()
    samples = [points[(i % len(points), i)] for i in range(start, steps)]
    return Trainer(model, loss_fn, optimizer, samples, start, steps)


def test_hooks_are_called_in_order_around_every_step():
    calls = []
    trainer = _trainer(3, start=1)
    trainer.register_hooks([Recorder("a", calls), Recorder("b", calls)])
    trainer.train()
    assert calls == [
        ("a", "before_train", 1),
        ("b", "before_train", 1),
        ("a", "before_step", 1),
        ("b", "before_step", 1),
        ("a", "after_step", 2),
        ("b", "after_step", 2),
        ("a", "before_step", 2),
        ("b", "before_step", 2),
        ("a", "after_step", 3),
        ("b", "after_step", 3),
        ("a", "after_train", True),
        ("b", "after_train", True),
    ]
    assert trainer.iter == 3 and trainer.completed
    assert set(trainer.step_values) == {"loss", "data_seconds", "seconds"}


def test_every_hook_cleans_up_after_an_error_and_the_first_failure_is_raised():
    calls = []

    def fails_at_step_2(model, sample, iteration):
        if iteration == 1:
            raise ValueError("broken sample")
        return toy.squared_error(model, sample, iteration)

    trainer = _trainer(3, loss_fn=fails_at_step_2)
    trainer.register_hooks([Recorder("a", calls, fail_after_train=True), Recorder("b", calls)])
    with pytest.raises(ValueError, match="broken sample"):  # the loop's error, not the hook's
        trainer.train()
    assert calls[-2:] == [("a", "after_train", False), ("b", "after_train", False)]
    calls.clear()
    trainer = _trainer(2)
    trainer.register_hooks([Recorder("a", calls, fail_after_train=True), Recorder("b", calls)])
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    assert calls[-1] == ("b", "after_train", True)
