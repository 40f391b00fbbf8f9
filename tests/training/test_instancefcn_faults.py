"""Training that survives being killed, and stops with one clear line on bad input (DESIGN §11)."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ifcn.cli import main as cli_main
from ifcn.config import load_config
from ifcn.criterion import build_criterion
from ifcn.training import checkpoint
from ifcn.training import instancefcn as train_module
from ifcn.training.instancefcn import run_training
from tests.configs import ROOT, write_config
from tests.tmpfs import tmpfs

ITERS = 12
LOG_COLUMNS = ["iteration", "loss", "loss_objectness", "loss_mask", "lr", "num_pos", "num_neg"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here and in the launched runs (OMP_NUM_THREADS=1), so that a run
    killed in a subprocess and resumed in this one computes exactly what one run computes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clean_env() -> dict[str, str]:
    """This environment without launcher variables (a CI job may itself run under SLURM)."""
    launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "TORCHELASTIC_")) and key not in launch
    }
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def fault_config(tmp_path_factory, tiny_data) -> Path:
    folder = tmp_path_factory.mktemp("faults")
    return write_config(
        folder, tiny_data, train={"iters": ITERS, "log_period": 1, "checkpoint_period": 3}
    )


@pytest.fixture(scope="module")
def straight(fault_config, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run_training(load_config(fault_config), out, show_progress=False)
    return out


def _start(config: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "ifcn", "train", "--config", str(config)]
    command += ["--out", str(out), "--device", "cpu", *extra]
    return subprocess.Popen(
        command,
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **popen,
    )


def _wait_for_log_row(log: Path, iteration: int, task: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) > iteration:
            return
        if task.poll() is not None:
            raise AssertionError(f"training ended before it was signalled: {task.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"no log row {iteration} in {log}")


def _resume_auto(config: Path, out: Path) -> int:
    return cli_main(["train", "--config", str(config), "--out", str(out), "--resume", "auto"])


def _assert_same_run(expected: Path, got: Path) -> None:
    a = torch.load(expected / "model_final.pt", weights_only=False)["model"]
    b = torch.load(got / "model_final.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    pd.testing.assert_frame_equal(
        pd.read_csv(got / "train_log.csv")[LOG_COLUMNS],
        pd.read_csv(expected / "train_log.csv")[LOG_COLUMNS],
    )


def _finite(state_dict: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point())


def test_sigkill_at_a_random_step_then_resume_auto_is_bitwise_the_uninterrupted_run(
    fault_config, straight, tmp_path
):
    out = tmp_path / "run"
    kill_after = random.Random().randint(1, ITERS - 3)
    task = _start(fault_config, out)
    try:
        _wait_for_log_row(out / "train_log.csv", kill_after, task)
        task.send_signal(signal.SIGKILL)
        task.wait(timeout=60)
    finally:
        task.kill()
        task.stderr.close()
    assert task.returncode == -signal.SIGKILL, f"killed after log row {kill_after}"
    assert not (out / "model_final.pt").exists()
    # Snakemake deletes the outputs of the failed job: the log's rows come from the checkpoint
    (out / "train_log.csv").unlink()
    assert _resume_auto(fault_config, out) == 0, f"killed after log row {kill_after}"
    _assert_same_run(straight, out)
    assert not list(out.rglob("*.tmp"))


def test_a_forced_rerun_of_a_complete_run_trains_from_iteration_0(
    fault_config, straight, tmp_path, capsys
):
    # `snakemake --forcerun train` deletes the job's outputs and runs it again with
    # --resume auto: the newest checkpoint is at the last iteration, the run was complete
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "model_final.pt").unlink()
    (out / "train_log.csv").unlink()
    old = checkpoint.list_checkpoints(out)
    assert old[-1] == checkpoint.checkpoint_path(out, ITERS)
    assert _resume_auto(fault_config, out) == 0
    err = capsys.readouterr().err
    assert f"the run was complete; its checkpoints moved to {out}/checkpoints.old-" in err
    assert ", steps 0..12" in err and "resuming" not in err
    _assert_same_run(straight, out)
    assert len(pd.read_csv(out / "train_log.csv")) == ITERS
    (aside,) = out.glob("checkpoints.old-*")
    assert sorted(p.name for p in aside.iterdir()) == [p.name for p in old]
    assert [p.name for p in checkpoint.list_checkpoints(out)] == [p.name for p in old]


def test_a_checkpoint_with_a_non_finite_optimizer_state_is_not_resumed(
    tmp_path, straight, fault_config, capsys
):
    out = tmp_path / "run"
    shutil.copytree(straight / "checkpoints", out / "checkpoints")
    path = checkpoint.checkpoint_path(out, 9)
    state = torch.load(path, weights_only=True)
    buffer = state["optimizer"]["state"][0]["momentum_buffer"]
    buffer.view(-1)[0] = float("nan")
    torch.save(state, path)
    args = ["train", "--config", str(fault_config), "--out", str(out), "--resume", str(path)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ifcn train: error: {path}: optimizer state momentum_buffer of parameter 0 is not finite"
    ]
    assert not (out / "train_log.csv").exists()


def test_sigterm_checkpoints_the_step_it_stopped_at_and_exits_non_zero(
    fault_config, straight, tmp_path
):
    out = tmp_path / "run"
    # its own process group, signalled whole as SLURM signals a job: the DataLoader worker too
    task = _start(fault_config, out, "--workers", "1", start_new_session=True)
    try:
        _wait_for_log_row(out / "train_log.csv", 2, task)
        os.killpg(task.pid, signal.SIGTERM)
        _, err = task.communicate(timeout=60)
    finally:
        task.kill()
    last = err.decode().strip().splitlines()[-1]
    assert task.returncode == 143, err.decode()[-3000:]
    found = re.fullmatch(
        r"ifcn train: error: \S+: stopped by SIGTERM at iteration (\d+); checkpoint (\S+) "
        r"written; rerun with --resume auto to continue",
        last,
    )
    assert found, last
    iteration = int(found.group(1))
    path = checkpoint.checkpoint_path(out, iteration)
    assert 2 <= iteration < ITERS and Path(found.group(2)) == path
    assert checkpoint.latest_checkpoint(out) == path
    assert checkpoint.load(path)["iteration"] == iteration
    assert not (out / "model_final.pt").exists()
    assert _resume_auto(fault_config, out) == 0
    _assert_same_run(straight, out)


def test_resume_auto_never_picks_a_truncated_checkpoint_or_a_temporary_file(
    fault_config, straight, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "model_final.pt").unlink()
    folder = out / "checkpoints"
    newest = folder / "model_0000012.pt"
    complete = newest.read_bytes()
    newest.write_bytes(complete[: len(complete) // 2])  # a disk that filled up mid-write
    (folder / "model_0000014.pt").write_bytes(b"")  # truncated by hand
    stray = folder / ".model_0000015.pt.4242.tmp"  # complete, but its writer never renamed it
    stray.write_bytes(complete)
    assert checkpoint.latest_checkpoint(out) == folder / "model_0000009.pt"
    assert _resume_auto(fault_config, out) == 0
    _assert_same_run(straight, out)
    assert not stray.exists()


class _NanAtCall:
    """The real criterion, whose loss turns NaN at its ``call``-th use (1-based)."""

    def __init__(self, criterion, call: int):
        self.criterion, self.call, self.calls = criterion, call, 0

    def __call__(self, outputs, target, generator=None):
        self.calls += 1
        losses = self.criterion(outputs, target, generator)
        if self.calls == self.call:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def test_nan_loss_names_the_iteration_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_config, monkeypatch, capsys
):
    monkeypatch.setattr(
        train_module,
        "build_criterion",
        lambda config, model=None: _NanAtCall(build_criterion(config, model), 5),
    )
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(tiny_config), "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    good = checkpoint.checkpoint_path(out, 3)
    assert last == (
        f"ifcn train: error: {out}: loss is nan at iteration 5; the weights were not updated; "
        f"last good checkpoint: {good}"
    )
    assert checkpoint.list_checkpoints(out) == [good]
    assert _finite(checkpoint.load(good)["model"])
    assert not (out / "model_final.pt").exists()


def test_absurd_learning_rate_stops_and_no_checkpoint_holds_non_finite_weights(
    tmp_path, tiny_data, make_config, capsys
):
    config = make_config(tmp_path, tiny_data, train={"lr": 1e12, "checkpoint_period": 1})
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"(loss is nan at|weights are not finite after) iteration \d+", last), last
    named = re.search(r"last good checkpoint: (\S+)$", last).group(1)
    assert named == str(checkpoint.latest_checkpoint(out))
    assert all(_finite(checkpoint.load(p)["model"]) for p in checkpoint.list_checkpoints(out))
    assert not (out / "model_final.pt").exists()


@pytest.mark.parametrize("resume", ["path", "auto"])
def test_resume_from_another_architecture_is_one_line_and_exit_2(
    resume, tmp_path, tiny_data, make_config, straight, capsys
):
    out = tmp_path / "run"
    shutil.copytree(straight / "checkpoints", out / "checkpoints")
    k3 = make_config(tmp_path, tiny_data, model={"k": 3})
    ckpt = out / "checkpoints" / "model_0000012.pt"
    given = str(ckpt) if resume == "path" else "auto"
    assert cli_main(["train", "--config", str(k3), "--out", str(out), "--resume", given]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ifcn train: error: {ckpt}: checkpoint was trained with model.k=5, the config asks for 3"
    ]
    assert not (out / "train_log.csv").exists() and not (out / "model_final.pt").exists()


def test_resume_auto_refuses_a_checkpoint_of_other_training_settings(
    tmp_path, tiny_data, make_config, straight, capsys
):
    # a config edited between two workflow runs: continuing the old run would mix two runs
    out = tmp_path / "run"
    shutil.copytree(straight / "checkpoints", out / "checkpoints")
    edited = make_config(
        tmp_path, tiny_data, train={"iters": ITERS, "log_period": 1, "checkpoint_period": 3}
    )
    text = edited.read_text().replace("lr: 0.01", "lr: 0.02")
    edited.write_text(text)
    assert _resume_auto(edited, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr 0.01 -> 0.02" in err[0] and "--resume " in err[0], err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resume", "missing.pt"], "missing.pt: checkpoint not found"),
        (["--amp", "bf16", "--device", "cpu"], "--amp bf16 needs a CUDA device"),
        (["--workers", "-1"], "--workers: -1 is less than the minimum of 0"),
    ],
)
def test_bad_invocation_is_one_line_and_exit_2(extra, message, tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(tiny_config), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_resume_from_a_final_model_is_refused(tmp_path, straight, fault_config, capsys):
    out = tmp_path / "run"
    final = straight / "model_final.pt"
    args = ["train", "--config", str(fault_config), "--out", str(out), "--resume", str(final)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ifcn train: error: {final}: a final model (weights only), not a training checkpoint: "
        "--resume takes a file of the run's checkpoints/ folder "
        "(checkpoints/model_NNNNNNN.pt) or auto"
    ]
    assert not out.exists()


def test_an_existing_file_as_out_is_refused_and_left_alone(tmp_path, fault_config, capsys):
    out = tmp_path / "run"
    out.write_text("not a folder")
    assert cli_main(["train", "--config", str(fault_config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ifcn train: error: {out}: --out is an existing file, not a folder"]
    assert out.read_text() == "not a folder"


@pytest.fixture
def small_disk(tmp_path, straight):
    """A tmpfs that holds one checkpoint of the fault config's model and not two (root only)."""
    size = (straight / "checkpoints" / "model_0000012.pt").stat().st_size
    with tmpfs(tmp_path / "disk", f"size={size * 3 // 2}") as folder:
        yield folder


def test_a_full_disk_is_one_line_naming_the_checkpoint_and_keeps_the_previous_one(
    small_disk, fault_config, straight, capsys
):
    out = small_disk / "run"
    assert cli_main(["train", "--config", str(fault_config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    failed = checkpoint.checkpoint_path(out, 6)
    assert err[-1] == (
        f"ifcn train: error: {failed}: cannot write checkpoint: No space left on device"
    ), err[-3:]
    assert not any("Traceback" in line for line in err)
    previous = checkpoint.checkpoint_path(out, 3)
    assert checkpoint.list_checkpoints(out) == [previous]
    assert checkpoint.load(previous, resumable=True)["iteration"] == 3
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "model_final.pt").exists()


@pytest.mark.parametrize("same_file", [True, False])
def test_evaluation_images_in_the_training_set_are_refused(tmp_path, tiny_data, capsys, same_file):
    val = tiny_data / "train.json"
    if not same_file:
        val = tmp_path / "val_copy.json"
        shutil.copy(tiny_data / "train.json", val)
    config = write_config(tmp_path, tiny_data, data={"val_json": str(val)})
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ifcn train: error: {val}: ")
    assert "training" in err[0] and not (out / "model_final.pt").exists()
    allowed = write_config(tmp_path, tiny_data, data={"val_json": str(val)}, train={"iters": 1})
    text = allowed.read_text().replace("data:\n", "data:\n  allow_shared_images: true\n", 1)
    allowed.write_text(text)
    assert cli_main(["train", "--config", str(allowed), "--out", str(out)]) == 0
