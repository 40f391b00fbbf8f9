"""The workflow on a running SLURM cluster (tests/slurm_cluster.py: one node, this machine):
the real executor plugin submits every job with the resources of the slurm profile and reads
their states back; a training job preempted twice, once requeued by SLURM and once retried by
Snakemake, ends with the weights of an uninterrupted run; the cluster leaves nothing behind,
even when a test fails. One workflow run serves these checks (a few minutes on 2 cores)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.configs import ROOT
from tests.slurm_cluster import Cluster, alive, bind_to_parent, stray_processes

BIN = Path(sys.executable).parent
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
# Long enough to be interrupted twice after a checkpoint, short enough to train in seconds.
TRAIN = {"iters": 60, "checkpoint_period": 4, "log_period": 2}
# One inference shard per split: two jobs fewer (each job starts Snakemake twice), the scatter
# and gather rules still run.
INFER = {"shards": 1}
JOBS = 14  # Snakemake's jobs on the cluster: all but the target rule `all`, which runs locally
RUN_RULES = {
    "synth", "train", "infer", "merge", "nms", "evaluate", "classify_train",
    "classify_predict", "classify_evaluate", "figures", "report",
}  # fmt: skip


def fitted_profile(cluster: Cluster) -> dict:
    """workflow/profiles/slurm fitted to the test cluster, as a user fits it to theirs: its
    partition, no account, squeue for job states (no accounting database), no GPU (GPU
    requests are checked by the dry run of test_workflow.py), half the node's CPUs and a
    quarter of its memory at most per job (two jobs side by side), as many threads as CPUs;
    runtimes, retries and every other setting as they are. Status checks start after 2 s."""
    profile = yaml.safe_load(PROFILE.read_text())
    cpus, memory = max(1, cluster.cpus // 2), cluster.memory_mb // 4
    defaults = profile["default-resources"]
    defaults["slurm_partition"] = cluster.partition
    defaults["cpus_per_task"] = min(defaults["cpus_per_task"], cpus)
    defaults["mem_mb"] = min(defaults["mem_mb"], memory)
    for resources in profile["set-resources"].values():
        resources.pop("gpu", None)
        resources["cpus_per_task"] = min(resources.get("cpus_per_task", cpus), cpus)
        resources["mem_mb"] = min(resources.get("mem_mb", memory), memory)
    profile["set-threads"] = {rule: min(n, cpus) for rule, n in profile["set-threads"].items()}
    profile.update(
        {
            "slurm-status-command": "squeue",
            "slurm-no-account": True,
            "slurm-init-seconds-before-status-checks": 2,
        }
    )
    return profile


def _submitted(log: str) -> dict[str, dict]:
    """SLURM job id -> rule and resources of the Snakemake job it runs, from Snakemake's log."""
    resources, rules = {}, {}
    for block in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", log, re.M):
        jobid = re.search(r"^    jobid: (\d+)$", block.group(2), re.M).group(1)
        values = re.search(r"^    resources: (.*)$", block.group(2), re.M)
        rules[jobid] = block.group(1)
        resources[jobid] = dict(kv.split("=", 1) for kv in values.group(1).split(", "))
    return {
        slurm_id: {"rule": rules[jobid], **resources[jobid]}
        for jobid, slurm_id in re.findall(
            r"^Job (\d+) has been submitted with SLURM jobid (\d+)", log, re.M
        )
    }


def _minutes(limit: str) -> float:
    """scontrol's TimeLimit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _checkpoints(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("model_*.pt"))


@dataclass
class SlurmRun:
    work: Path
    returncode: int
    log: str
    profile: dict
    jobs: list[dict[str, str]]  # scontrol show job: this run's jobs, each as last seen
    requeued: str  # the train job SLURM requeued
    stopped_at: int  # the iteration its SIGTERM checkpoint holds
    first_resume: str  # train.log of the requeued job's second start
    retried_after: int  # newest checkpoint when the job was cancelled with SIGTERM


class Watch:
    """Waits on a running workflow, and keeps the last record of every job slurmctld shows
    (it forgets a job MinJobAge = 10 minutes after its end, and a slow run lasts longer)."""

    def __init__(self, process: subprocess.Popen, cluster: Cluster) -> None:
        self.process, self.cluster = process, cluster
        self.jobs: dict[str, dict[str, str]] = {}
        self.recorded = 0.0

    def record(self) -> None:
        self.jobs |= {job["JobId"]: job for job in self.cluster.jobs()}
        self.recorded = time.monotonic()

    def until(self, condition, what: str, timeout: float = 1800):
        """``condition()``'s first true value, polled every 0.05 s; the jobs every 2 s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if time.monotonic() - self.recorded > 2:
                self.record()
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                raise AssertionError(f"the workflow ended while {what}")
            time.sleep(0.05)
        raise AssertionError(f"timed out {what}")

    def finish(self, timeout: float = 1800) -> int:
        """The workflow's exit status, once it has ended."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the workflow to end")
            self.record()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)  # back as soon as it ends, not up to 2 s later
        self.record()
        return self.process.returncode


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory) -> SlurmRun:
    """config/tiny.yaml through `snakemake --executor slurm` with the fitted profile; its
    training job is requeued (`scontrol requeue`, what a preempting cluster does) after its
    first checkpoint, then, once running again past a new checkpoint, cancelled the way a
    preempting cluster signals it (`scancel --signal=TERM --full`), which fails the job and
    leaves it to Snakemake's retries."""
    work = tmp_path_factory.mktemp("slurm") / "work"
    work.mkdir()
    for name in ("Snakefile", "environment.yml"):
        shutil.copy(ROOT / name, work)
    for name in ("workflow", "config"):
        shutil.copytree(ROOT / name, work / name)
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["train"].update(TRAIN)
    config["infer"].update(INFER)
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    profile = fitted_profile(slurm_cluster)
    (work / "profile").mkdir()
    (work / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    env = slurm_cluster.env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    checkpoints = work / "results" / "tiny" / "train" / "checkpoints"
    train_log = work / "results" / "tiny" / "logs" / "train.log"
    with open(work / "snakemake.log", "w") as log:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--profile", "profile", "--configfile", "run.yaml"],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=bind_to_parent(signal.SIGKILL),  # not left polling a dead cluster
        )  # fmt: skip
    watch = Watch(process, slurm_cluster)
    try:

        def train_job() -> dict | None:
            running = [
                job
                for job in slurm_cluster.jobs()
                if job.get("Comment", "").startswith("rule_train") and job["JobState"] == "RUNNING"
            ]
            return running[0] if running else None

        watch.until(lambda: _checkpoints(checkpoints), "waiting for the first checkpoint")
        requeued = watch.until(train_job, "looking for the training job")["JobId"]
        slurm_cluster.command("scontrol", "requeue", requeued)

        stopped = watch.until(
            lambda: re.search(r"stopped by SIGTERM at iteration (\d+)", _text(train_log)),
            "waiting for the training to checkpoint and stop",
        )
        stopped_at = int(stopped.group(1))

        first_resume = watch.until(
            lambda: "resuming from" in _text(train_log) and _text(train_log),
            "waiting for the requeued job to resume",
        )
        newer = watch.until(
            lambda: [i for i in _checkpoints(checkpoints) if i > stopped_at],
            "waiting for a checkpoint of the requeued job",
        )
        slurm_cluster.command("scancel", "--signal=TERM", "--full", requeued)
        returncode = watch.finish()  # minutes on a quiet machine, many more on a busy one
    finally:
        if process.poll() is None:  # a failed check: the cluster's stop cancels its jobs
            process.kill()
            process.wait()
    text = (work / "snakemake.log").read_text()
    uuid = re.search(r"SLURM run ID: (\S+)", text).group(1)
    return SlurmRun(
        work=work,
        returncode=returncode,
        log=text,
        profile=profile,
        jobs=[job for job in watch.jobs.values() if job["JobName"] == uuid],
        requeued=requeued,
        stopped_at=stopped_at,
        first_resume=first_resume,
        retried_after=max(newer),
    )


@pytest.mark.slow
def test_the_tiny_workflow_runs_on_slurm_each_job_with_the_profiles_resources(slurm_run):
    assert slurm_run.returncode == 0, slurm_run.log[-3000:]
    assert f"{JOBS + 1} of {JOBS + 1} steps (100%) done" in slurm_run.log
    assert (slurm_run.work / "results" / "tiny" / "report.md").is_file()
    submitted = _submitted(slurm_run.log)
    jobs = {job["JobId"]: job for job in slurm_run.jobs}
    # every job Snakemake submitted is SLURM's, and none other: 14 jobs and the training's retry
    assert submitted.keys() == jobs.keys()
    assert {job["rule"] for job in submitted.values()} == RUN_RULES
    assert len(jobs) == JOBS + 1, sorted(job["rule"] for job in submitted.values())
    # the only local job is the target rule `all`
    assert re.findall(r"^localrule (\w+):", slurm_run.log, re.M) == ["all"]
    profile = slurm_run.profile
    for slurm_id, asked in submitted.items():
        job, rule = jobs[slurm_id], asked["rule"]
        assert job["Comment"].startswith(f"rule_{rule}"), job["Comment"]
        # what SLURM holds is what Snakemake asked for ...
        assert job["NumCPUs"] == asked["cpus_per_task"], (rule, job["NumCPUs"])
        assert job["MinMemoryNode"] == f"{asked['mem_mb']}M", (rule, job["MinMemoryNode"])
        assert _minutes(job["TimeLimit"]) == int(asked["runtime"]), (rule, job["TimeLimit"])
        assert job["Partition"] == profile["default-resources"]["slurm_partition"]
        assert job["Requeue"] == "1"  # the profile's slurm-requeue (the cluster's default is 0)
        # ... and what Snakemake asked for is the profile's, where the profile names the rule
        expected = {"cpus_per_task": profile["default-resources"]["cpus_per_task"]}
        expected |= profile["set-resources"].get(rule, {})
        for key in ("cpus_per_task", "mem_mb", "runtime"):
            if key in expected:
                assert int(asked[key]) == expected[key], (rule, key, asked[key])
    states = sorted(job["JobState"] for job in jobs.values())
    assert states == ["COMPLETED"] * JOBS + ["FAILED"], states


@pytest.mark.slow
def test_a_preempted_training_job_comes_back_and_ends_bitwise_as_an_uninterrupted_run(
    slurm_run, tmp_path
):
    run = slurm_run.work / "results" / "tiny"
    train = [job for job in slurm_run.jobs if job.get("Comment", "").startswith("rule_train")]
    requeued = next(job for job in train if job["JobId"] == slurm_run.requeued)
    retried = [job for job in train if job["JobId"] != slurm_run.requeued]
    # SLURM put the requeued job back on the node under its id; it resumed from the checkpoint
    # its SIGTERM handler wrote
    assert requeued["Restarts"] == "1" and requeued["JobState"] == "FAILED"
    assert slurm_run.stopped_at >= TRAIN["checkpoint_period"]
    assert (
        f"checkpoints/model_{slurm_run.stopped_at:07d}.pt at iteration {slurm_run.stopped_at}"
        in slurm_run.first_resume
    )
    # the job that `scancel --signal=TERM --full` failed was retried by Snakemake as a new job,
    # which resumed from a checkpoint written after the requeue
    assert len(retried) == 1 and retried[0]["JobState"] == "COMPLETED"
    assert "Trying to restart job" in slurm_run.log
    resumed = re.search(
        r"resuming from \S+ at iteration (\d+)", (run / "logs/train.log").read_text()
    )
    assert resumed and slurm_run.stopped_at < int(resumed.group(1)) < TRAIN["iters"]
    assert int(resumed.group(1)) >= slurm_run.retried_after

    # the same training, uninterrupted, with the job's thread count (the profile's threads)
    threads = str(slurm_run.profile["set-threads"]["train"])
    reference = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, "-m", "ifcn", "train", "--config", str(run / "config.yaml"),
         "--out", str(reference), "--device", "cpu"],
        cwd=slurm_run.work, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.load(run / "train" / "model_final.pt", weights_only=True)["model"]
    expected = torch.load(reference / "model_final.pt", weights_only=True)["model"]
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    columns = ["iteration", "loss", "loss_objectness", "loss_mask", "lr", "num_pos", "num_neg"]
    pd.testing.assert_frame_equal(
        pd.read_csv(run / "train" / "train_log.csv")[columns],
        pd.read_csv(reference / "train_log.csv")[columns],
    )


INNER_TEST = """
import json, os, subprocess
from tests.conftest import slurm_cluster  # noqa: F401 (the fixture)

def test_fails_with_a_job_running(slurm_cluster):
    report = {"folder": str(slurm_cluster.folder), "pids": slurm_cluster.pids}
    with open(os.environ["CLUSTER_REPORT"], "w") as f:
        json.dump(report, f)
    subprocess.run(["sbatch", "--wrap", "sleep 600"], env=slurm_cluster.env(), check=True)
    assert False, "failing on purpose"
"""


def test_a_failing_test_leaves_no_slurm_daemon_job_or_file_behind(slurm_cluster, tmp_path):
    """A pytest run whose test fails while its job runs: the session's cluster is stopped,
    its job and daemons are gone, and so is its folder."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    report = tmp_path / "cluster.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "--basetemp", str(tmp_path / "basetemp"), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CLUSTER_REPORT": str(report)},
    )  # fmt: skip
    assert done.returncode == 1 and "failing on purpose" in done.stdout, done.stdout[-3000:]
    inner = json.loads(report.read_text())
    folder = Path(inner["folder"])
    assert folder != slurm_cluster.folder and not folder.exists()
    assert set(inner["pids"]) == {"munged", "slurmctld", "slurmd"}
    assert not [pid for pid in inner["pids"].values() if alive(pid)]
    assert stray_processes(folder) == []
