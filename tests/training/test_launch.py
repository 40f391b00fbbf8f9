"""`ifcn train --nproc-per-node N` (ifcn.training.launch): ranks forked from one process, which
end together whichever of them fails. The training it runs is tested beside torchrun's in
tests/training/test_distributed.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from ifcn import cli
from tests.configs import ROOT


def _launch(body: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """`fork_ranks(2, stage)` in a process of its own, `stage` defined by `body` (it may read
    its rank from RANK, as training does)."""
    script = "import os, signal, sys, time\nfrom ifcn.training import launch\n"
    script += textwrap.dedent(body)
    script += "\nsys.exit(launch.fork_ranks(2, stage))\n"
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return done, time.monotonic() - start


def test_each_rank_gets_torchruns_environment_and_the_launcher_waits_for_all():
    done, _ = _launch("""
        def stage():
            keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
            print(*(os.environ[k] for k in keys), os.environ["OMP_NUM_THREADS"], flush=True)
            return 0
    """)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["0 0 2 2 127.0.0.1 1", "1 1 2 2 127.0.0.1 1"]


def test_a_failing_rank_stops_the_others_and_its_status_is_the_launchers():
    """The other rank would wait for its dead peer (until the collective's timeout): it is
    told to stop (SIGTERM, which it handles as a stop) at once."""
    done, seconds = _launch("""
        def stage():
            if os.environ["RANK"] == "1":
                return 3
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                print("rank 0 stopped", flush=True)
                return 143
            return 0
    """)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "rank 0 stopped" and seconds < 30


def test_a_rank_that_ignores_the_stop_is_killed_after_the_grace_period():
    done, seconds = _launch("""
        launch.GRACE = 1.0
        def stage():
            if os.environ["RANK"] == "1":
                return 4
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
            return 0
    """)
    assert done.returncode == 4 and seconds < 30, done.stderr


def test_a_bug_in_a_rank_shows_its_traceback_and_fails_the_launch():
    done, _ = _launch("""
        def stage():
            if os.environ["RANK"] == "0":
                raise ZeroDivisionError("a bug in rank 0")
            return 0
    """)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ZeroDivisionError: a bug in rank 0" in done.stderr


@pytest.mark.parametrize(
    ("nproc", "environ", "message"),
    [
        ("0", {}, "--nproc-per-node 0: give 1 or more processes"),
        ("2", {"WORLD_SIZE": "2", "RANK": "0"}, "already one rank of a launch"),
        ("2", {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1"}, "already one rank of a launch"),
    ],
)
def test_a_launch_that_cannot_fork_is_one_line(
    monkeypatch, capsys, tiny_config, tmp_path, nproc, environ, message
):
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    argv = ["train", "--config", str(tiny_config), "--out", str(tmp_path / "run")]
    assert cli.main([*argv, "--nproc-per-node", nproc]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ifcn train: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_bad_config_is_one_line_for_all_the_ranks(tmp_path, tiny_config):
    """Checked once before the fork: every rank would print the same error."""
    config = tmp_path / "bad.yaml"
    config.write_text(tiny_config.read_text() + "\nnot_a_section: 1\n")
    command = [sys.executable, "-m", "ifcn", "train", "--config", str(config), "--out",
               str(tmp_path / "run"), "--nproc-per-node", "2", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"ifcn train: error: {config}: ")
    assert not (tmp_path / "run").exists()
