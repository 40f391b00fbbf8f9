"""The training log keeps every row across resumes, once, and TensorBoard holds the same values."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ifcn.errors import IfcnError
from ifcn.training import checkpoint
from tests.training import toy


@pytest.fixture
def straight(tmp_path):
    """An uninterrupted toy run (6 steps, a row per step, checkpoints at 3 and 6)."""
    out = tmp_path / "straight"
    toy.fit(out)
    return out


def _killed_after_step_5(straight, out):
    """The straight run as a run killed after step 5 leaves it: no checkpoint 6, no final."""
    out.mkdir()
    (out / "checkpoints").mkdir()
    checkpoint.checkpoint_path(out, 3).write_bytes(
        checkpoint.checkpoint_path(straight, 3).read_bytes()
    )
    rows = (straight / "train_log.csv").read_text().splitlines(keepends=True)
    (out / "train_log.csv").write_text("".join(rows[:6]))  # header + rows 1-5


def _read(out) -> pd.DataFrame:
    return pd.read_csv(out / "train_log.csv")[["iteration", "loss", "lr"]]


def test_a_resume_logs_each_iteration_once(straight, tmp_path):
    out = tmp_path / "run"
    _killed_after_step_5(straight, out)
    toy.fit(out, resume=checkpoint.checkpoint_path(out, 3))
    pd.testing.assert_frame_equal(_read(out), _read(straight))


def test_the_rows_before_the_checkpoint_survive_a_deleted_log(straight, tmp_path):
    # Snakemake deletes the outputs of a failed job, train_log.csv among them
    out = tmp_path / "run"
    _killed_after_step_5(straight, out)
    (out / "train_log.csv").unlink()
    toy.fit(out, resume=checkpoint.checkpoint_path(out, 3))
    pd.testing.assert_frame_equal(_read(out), _read(straight))
    saved = torch.load(checkpoint.checkpoint_path(out, 6), weights_only=True)["log"]
    assert saved["columns"] == list(toy.COLUMNS)
    assert [row[0] for row in saved["rows"]] == ["1", "2", "3", "4", "5", "6"]


def test_a_checkpoint_without_rows_keeps_those_of_the_file(straight, tmp_path):
    # checkpoints written before they held the log's rows
    out = tmp_path / "run"
    _killed_after_step_5(straight, out)
    path = checkpoint.checkpoint_path(out, 3)
    state = torch.load(path, weights_only=True)
    del state["log"]
    torch.save(state, path)
    toy.fit(out, resume=path)
    pd.testing.assert_frame_equal(_read(out), _read(straight))
    (out / "train_log.csv").write_text("step,loss\n1,0.5\n")
    checkpoint.checkpoint_path(out, 6).unlink()
    with pytest.raises(IfcnError, match="train_log.csv: not a training log"):
        toy.fit(out, resume=path)


def test_a_period_split_by_a_stop_is_logged_as_the_mean_of_all_its_steps(tmp_path):
    """Stopped after step 3 of a 2-step logging period: the resumed run's row 4 averages steps
    3 and 4 (step 3's sum came back from the checkpoint), as the uninterrupted run's does."""
    settings = toy.SETTINGS | {"log_period": 2}
    straight, out = tmp_path / "straight", tmp_path / "run"
    toy.fit(straight, settings=settings)
    toy.fit(out, settings=settings)
    checkpoint.checkpoint_path(out, 6).unlink()
    (out / "model_final.pt").unlink()
    toy.fit(out, resume=checkpoint.checkpoint_path(out, 3), settings=settings)
    assert list(_read(out)["iteration"]) == [2, 4, 6]
    pd.testing.assert_frame_equal(_read(out), _read(straight))


def test_tensorboard_holds_the_csv_values_once_per_step_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    settings = toy.SETTINGS | {"tensorboard": True}
    toy.fit(out, settings=settings)
    # killed after step 5: the events of steps 4-5 are redone by the resumed run
    checkpoint.checkpoint_path(out, 6).unlink()
    (out / "model_final.pt").unlink()
    toy.fit(out, resume=checkpoint.checkpoint_path(out, 3), settings=settings)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    log = pd.read_csv(out / "train_log.csv")
    assert sorted(events.Tags()["scalars"]) == ["loss", "lr", "seconds"]
    for tag in ("loss", "lr"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3, 4, 5, 6], tag
        assert [s.value for s in scalars] == pytest.approx(log[tag].tolist(), rel=1e-5), tag
