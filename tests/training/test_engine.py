"""`engine.fit`, the loop of both trainers, on a toy regression: the cases callers rarely hit."""

from __future__ import annotations

import os
import re
import signal

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from ifcn.errors import IfcnError
from ifcn.training import checkpoint, engine
from ifcn.training.distributed import DistInfo
from ifcn.training.engine import Resume, build_lr_lambda

COLUMNS = ["iteration", "loss", "lr", "seconds"]
SETTINGS = {
    "iters": 6,
    "seed": 3,
    "log_period": 1,
    "checkpoint_period": 3,
    "keep_checkpoints": 2,
    "workers": 0,
    "lr": 0.05,
    "lr_step": 0.5,
    "lr_gamma": 0.1,
    "warmup_iters": 0,
}


class Points(Dataset):
    """Eight (x, y) pairs of a noisy line; the step seed adds its own noise, as a flip would."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        noise = torch.randn(1, generator=torch.Generator().manual_seed(seed)) * 0.01
        return {"x": self.x[index], "y": self.y[index] + noise}


def squared_error(model: nn.Module, sample: dict, iteration: int) -> dict[str, torch.Tensor]:
    return {"loss": (model(sample["x"][None])[0, 0] - sample["y"][0]) ** 2}


def _fit(out, resume=None, loss_fn=squared_error, settings=SETTINGS, **kwargs):
    torch.manual_seed(settings["seed"])
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(settings))
    kwargs = {"show_progress": False, **kwargs}
    return engine.fit(
        model, loss_fn, optimizer, scheduler, Points(), settings, out, DistInfo(),
        torch.device("cpu"), resume=resume, extras={"kind": "toy", "config": {"model": {}}},
        log_columns=COLUMNS, **kwargs,
    )  # fmt: skip


def _resume(path) -> Resume:
    return Resume(path, torch.load(path, weights_only=False))


def test_checkpoints_and_the_final_model_carry_the_trainers_extras(tmp_path):
    final = _fit(tmp_path / "run")
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == [
        "model_0000003.pt",
        "model_0000006.pt",
    ]
    state = torch.load(checkpoint.checkpoint_path(tmp_path / "run", 3), weights_only=False)
    assert state["kind"] == "toy" and state["iteration"] == 3 and state["config"] == {"model": {}}
    assert {"model", "optimizer", "lr_scheduler", "rng", "world_size"} <= state.keys()
    weights = torch.load(final, weights_only=False)
    assert weights.keys() == {"model", "iteration", "kind", "config"}
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log.columns) == COLUMNS and list(log["iteration"]) == [1, 2, 3, 4, 5, 6]
    assert log["lr"].tolist() == [0.05] * 3 + [0.005] * 3


def test_a_resume_at_the_last_iteration_trains_nothing_and_writes_the_final_model(tmp_path):
    out = tmp_path / "run"
    _fit(out)
    last = checkpoint.checkpoint_path(out, 6)
    before = last.stat().st_mtime_ns
    (out / "model_final.pt").unlink()
    final = _fit(out, resume=_resume(last))
    assert last.stat().st_mtime_ns == before  # not written again
    saved = torch.load(last, weights_only=False)["model"]
    for key, value in torch.load(final, weights_only=False)["model"].items():
        assert torch.equal(value, saved[key]), key


def test_a_checkpoint_beyond_the_run_is_refused(tmp_path):
    out = tmp_path / "run"
    _fit(out)
    with pytest.raises(IfcnError, match=r"iteration 6, beyond this run's 4 iterations"):
        _fit(
            tmp_path / "short",
            _resume(checkpoint.checkpoint_path(out, 6)),
            settings=SETTINGS | {"iters": 4},
        )


def test_sigterm_on_a_checkpoint_step_names_that_checkpoint_and_restores_the_handler(tmp_path):
    def terminated_at_step_3(model, sample, iteration):
        if iteration == 2:  # the step that ends at iteration 3, a checkpoint step
            os.kill(os.getpid(), signal.SIGTERM)
        return squared_error(model, sample, iteration)

    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    with pytest.raises(IfcnError) as raised:
        _fit(out, loss_fn=terminated_at_step_3)
    assert str(raised.value) == (
        f"{out}: stopped by SIGTERM at iteration 3; checkpoint "
        f"{checkpoint.checkpoint_path(out, 3)} written; rerun with --resume auto to continue"
    )
    assert checkpoint.list_checkpoints(out) == [checkpoint.checkpoint_path(out, 3)]
    assert not (out / "model_final.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == before


def test_tensorboard_holds_the_csv_values_once_per_step_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _fit(out, tensorboard=True)
    # killed after step 5: the events of steps 4-5 are redone by the resumed run
    checkpoint.checkpoint_path(out, 6).unlink()
    (out / "model_final.pt").unlink()
    _fit(out, resume=_resume(checkpoint.checkpoint_path(out, 3)), tensorboard=True)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    log = pd.read_csv(out / "train_log.csv")
    assert sorted(events.Tags()["scalars"]) == ["loss", "lr", "seconds"]
    for tag in ("loss", "lr"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3, 4, 5, 6], tag
        assert [s.value for s in scalars] == pytest.approx(log[tag].tolist(), rel=1e-5), tag


def test_progress_in_a_log_is_whole_lines(tmp_path, capsys):
    _fit(tmp_path / "run", show_progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert re.fullmatch(
        r"ifcn train: 1 process\(es\) x 1 image per step on cpu.*, steps 0..6", lines[0]
    )
    assert re.fullmatch(r"\S+ \S+ train: 100% 6/6 \[.*, loss=[0-9.e+-]+\]", lines[-1]), lines[-1]


def test_a_file_as_out_and_negative_workers_are_refused_before_any_work(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(IfcnError, match="--out is an existing file, not a folder"):
        engine.output_folder(taken)
    with pytest.raises(IfcnError, match="--workers must be 0 or more"):
        engine.worker_count(-1, 2)
    assert engine.worker_count(None, 2) == 2 and engine.worker_count(0, 2) == 0
