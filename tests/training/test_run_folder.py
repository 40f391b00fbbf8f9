"""One training at a time writes a run folder, and --resume auto knows a complete run."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ifcn.cli import main as cli_main
from ifcn.errors import IfcnError
from ifcn.training import checkpoint
from ifcn.training.distributed import DistInfo
from ifcn.training.run_folder import LOCK_NAME, RunLock, output_folder, start_run
from tests.configs import ROOT, write_config


def test_an_existing_file_as_out_is_refused(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(IfcnError, match="--out is an existing file, not a folder"):
        output_folder(taken)
    assert output_folder(tmp_path / "new") == tmp_path / "new"


def test_the_lock_has_one_holder_at_a_time_and_names_it(tmp_path):
    out = tmp_path / "run"
    first = RunLock(out)
    first.acquire()
    assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(IfcnError) as raised:
        RunLock(out).acquire()  # another open file description: flock refuses it too
    assert str(raised.value).startswith(f"{out}: is in use by process {os.getpid()} ")
    first.release()
    again = RunLock(out)
    again.acquire()
    again.release()


def _start_training(config: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "ifcn", "train", "--config", str(config)]
    command += ["--out", str(out), "--device", "cpu"]
    return subprocess.Popen(
        command, env=env | {"OMP_NUM_THREADS": "1"}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_a_second_training_into_a_busy_folder_is_refused_and_a_dead_holder_never_blocks(
    tmp_path, tiny_data, capsys
):
    # a long training in another process, then a second one (this process) into its folder
    config = write_config(
        tmp_path, tiny_data, train={"iters": 100000, "log_period": 1, "checkpoint_period": 100000}
    )
    out = tmp_path / "run"
    task = _start_training(config, out)
    try:
        deadline = time.monotonic() + 120
        while (
            not (out / "train_log.csv").exists()
            or len((out / "train_log.csv").read_text().splitlines()) < 2
        ):
            assert task.poll() is None, task.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first training logged no step"
            time.sleep(0.05)
        assert cli_main(["train", "--config", str(config), "--out", str(out), "--iters", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"ifcn train: error: {out}: is in use by process {task.pid} (another training "
            "writes there); wait for it to end or choose another --out"
        ]
        assert task.poll() is None  # the first goes on undisturbed
        assert not (out / "model_final.pt").exists()
    finally:
        task.send_signal(signal.SIGKILL)
        task.wait(timeout=60)
        task.stderr.close()
    # the lock of a killed process is gone with it
    assert cli_main(["train", "--config", str(config), "--out", str(out), "--iters", "2"]) == 0
    assert torch.load(out / "model_final.pt", weights_only=True)["iteration"] == 2


def _save(out: Path, iteration: int) -> Path:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": {},
        "iteration": iteration,
        "config": {"model": {}},
        "kind": checkpoint.PROPOSAL_MODEL,
    }
    return checkpoint.save_atomic(state, checkpoint.checkpoint_path(out, iteration))


def _start(out: Path, resume: str | None, iters: int = 6):
    return start_run(
        out, resume, DistInfo(), torch.device("cpu"),
        kind=checkpoint.PROPOSAL_MODEL, check=lambda state, path, auto: None, iters=iters,
    )  # fmt: skip


def test_resume_auto_continues_an_unfinished_run(tmp_path):
    out = tmp_path / "run"
    _save(out, 3)
    newest = _save(out, 4)
    with _start(out, "auto") as run:
        assert run.resume.path == newest and run.resume.state["iteration"] == 4
        assert run.out_dir == out and run.info == DistInfo()


def test_resume_auto_after_a_complete_run_sets_its_checkpoints_aside_and_starts_over(
    tmp_path, capsys
):
    out = tmp_path / "run"
    _save(out, 3)
    _save(out, 6)
    with _start(out, "auto") as run:
        assert run.resume is None
    aside = list(out.glob("checkpoints.old-*"))
    assert len(aside) == 1
    assert sorted(p.name for p in aside[0].iterdir()) == ["model_0000003.pt", "model_0000006.pt"]
    assert not (out / "checkpoints").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ifcn: --resume auto: {checkpoint.checkpoint_path(out, 6)} is at iteration 6, the last "
        f"of this run: the run was complete; its checkpoints moved to {aside[0]}, training from "
        "iteration 0"
    ]


def test_a_wrong_resume_path_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(IfcnError, match="checkpoint not found"):
        with _start(out, str(tmp_path / "missing.pt")):
            pass
    assert not out.exists()


def test_a_file_system_without_locks_is_said_once_and_not_fatal(tmp_path, monkeypatch, capsys):
    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    lock.release()
    assert capsys.readouterr().err == (
        f"ifcn: cannot lock {tmp_path / 'run'} ({os.strerror(errno.ENOLCK)}): make sure that no "
        "other training writes there\n"
    )
