"""Distributed training: torchrun and srun launches, gradient averaging, SIGTERM across ranks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ifcn.config import load_config
from ifcn.criterion import build_criterion
from ifcn.data.dataset import CocoInstances
from ifcn.errors import IfcnError
from ifcn.model import build_model
from ifcn.training import checkpoint, distributed
from ifcn.training.distributed import DistInfo, assigned_gpus, dist_info_from_env, slurm_init_method
from ifcn.training.hooks import build_lr_lambda
from ifcn.training.launch import free_port
from ifcn.training.sampler import IterationSampler, step_seed
from tests.configs import ROOT, write_config
from tests.slurm_cluster import Cluster

WORLD = 2
ITERS = 8
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables (a CI job may run in SLURM)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "TORCHELASTIC_")) and key not in LAUNCH_VARIABLES
    }
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread in this process, as in the launched ones (OMP_NUM_THREADS=1): on a
    busy small machine two threads per process oversubscribe the cores and run several times
    slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ddp_config(tmp_path_factory, tiny_data) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    return write_config(
        folder, tiny_data, train={"iters": ITERS, "log_period": 1, "checkpoint_period": 4}
    )


@pytest.fixture(scope="module")
def torchrun_run(ddp_config, tmp_path_factory) -> Path:
    """`ifcn train` under `torchrun --nproc-per-node 2` (gloo on CPU), uninterrupted."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(WORLD), "-m", "ifcn", "train"]
    command += ["--config", str(ddp_config), "--out", str(out), "--device", "cpu"]
    done = subprocess.run(
        command, env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_launch_environment_is_read_like_torchvision():
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0"}
    assert dist_info_from_env(torchrun) == DistInfo(3, 8, 1, "torchrun")
    srun = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}
    assert dist_info_from_env(srun) == DistInfo(5, 8, 1, "slurm")
    # a batch script of an 8-task job runs one process: it must not wait for 7 others
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}
    assert dist_info_from_env(batch) == DistInfo()
    assert dist_info_from_env({}) == DistInfo()
    one_node = {"SLURM_JOB_ID": "123456", "SLURM_STEP_NUM_NODES": "1"}
    assert slurm_init_method(one_node) == "tcp://127.0.0.1:23456"
    given = {"MASTER_ADDR": "node7", "MASTER_PORT": "29400", "SLURM_STEP_NUM_NODES": "4"}
    assert slurm_init_method(given) == "tcp://node7:29400"
    with pytest.raises(IfcnError, match="MASTER_ADDR"):
        slurm_init_method({"SLURM_STEP_NUM_NODES": "4"})


@pytest.mark.parametrize(
    "environ, given",
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
        ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({"SLURM_JOB_GPUS": "0"}, "SLURM_JOB_GPUS=0"),  # GPU index 0, not a count
        ({"SLURM_STEP_GPUS": "2,3"}, "SLURM_STEP_GPUS=2,3"),
    ],
)
def test_a_job_given_gpus_is_recognised_from_its_environment(environ, given):
    assert assigned_gpus(environ) == given


def test_device_auto_on_a_gpu_job_without_cuda_is_an_error_that_says_how_to_override(
    monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IfcnError) as raised:
        distributed.resolve_device("auto", environ={"SLURM_JOB_GPUS": "0"})
    message = str(raised.value)
    assert "this job was given GPUs (SLURM_JOB_GPUS=0)" in message and "--device cpu" in message
    assert "\n" not in message
    # asked for by name, the CPU is what the user wants; without GPUs given, auto is the CPU
    assert distributed.resolve_device("cpu", environ={"SLURM_JOB_GPUS": "0"}).type == "cpu"
    capsys.readouterr()
    assert distributed.resolve_device("auto", environ={}).type == "cpu"
    assert capsys.readouterr().err == "ifcn: --device auto: running on cpu (no CUDA device)\n"
    with pytest.raises(IfcnError, match="--device cuda asked for, but"):
        distributed.resolve_device("cuda", environ={})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "--device cuda asked for, but "),
        ("cuda:0", "--device cuda:0 asked for, but "),
        ("cuda:3", "--device cuda:3 asked for, but "),
        ("mps", "unknown device 'mps'; choose auto, cpu, cuda or cuda:N"),
        ("cuda:x", "unknown device 'cuda:x'; choose auto, cpu, cuda or cuda:N"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IfcnError) as raised:
        distributed.resolve_device(name, environ={})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_gpu_index_beyond_the_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.resolve_device("cuda:1", environ={}) == torch.device("cuda", 1)
    with pytest.raises(IfcnError, match=r"--device cuda:2 asked for, but PyTorch sees 2 CUDA "
                       r"device\(s\): cuda:0..cuda:1"):  # fmt: skip
        distributed.resolve_device("cuda:2", environ={})


@pytest.mark.parametrize("command", ["infer", "train", "viz"])
def test_device_cuda_0_without_cuda_is_one_line_from_each_stage(
    monkeypatch, capsys, tmp_path, command
):
    from ifcn import cli
    from tests.proposals.runs import small_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    images, config, model = small_run(tmp_path)
    args = {
        "infer": ["--config", str(config), "--checkpoint", str(model), "--images", str(images),
                  "--out", str(tmp_path / "c.h5")],
        "train": ["--config", str(config), "--out", str(tmp_path / "run")],
        "viz": ["--config", str(config), "--checkpoint", str(model), "--images", str(images),
                "--image-id", "5", "--out", str(tmp_path / "pictures")],
    }[command]  # fmt: skip
    assert cli.main([command, *args, "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda:0 asked for, but" in err[0], err
    assert not (tmp_path / "c.h5").exists()


def test_device_auto_takes_the_local_gpu_when_cuda_is_available(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    device = distributed.resolve_device("auto", local_rank=3, environ={"SLURM_JOB_GPUS": "0,1"})
    assert device == torch.device("cuda", 1)
    assert capsys.readouterr().err == "ifcn: --device auto: running on cuda:1 (Test GPU)\n"
    assert distributed.resolve_device("auto", announce=False, environ={}) == torch.device("cuda", 0)
    assert capsys.readouterr().err == ""


def test_sampler_visits_each_image_once_per_epoch_across_ranks_and_resumes_mid_epoch():
    num_images, steps = 6, 9  # 18 positions: three epochs of six images
    keys = [list(IterationSampler(num_images, 0, steps, 7, rank, WORLD)) for rank in range(WORLD)]
    positions = [keys[i % WORLD][i // WORLD][0] for i in range(steps * WORLD)]
    for epoch in range(3):
        assert sorted(positions[epoch * num_images : (epoch + 1) * num_images]) == list(range(6))
    assert positions[:num_images] != positions[num_images : 2 * num_images]
    for rank in range(WORLD):
        assert list(IterationSampler(num_images, 4, steps, 7, rank, WORLD)) == keys[rank][4:]
        assert {seed for _, seed in keys[rank]} == {step_seed(7, i, rank) for i in range(steps)}


def _averaged_gradient_reference(config: dict, ranks: list[int]) -> tuple[dict, list[float]]:
    """Single-process SGD whose gradient is the mean of the ranks' per-image gradients.

    Each rank r takes at step i the sampler's key at position i·W + r, the step seed of
    (seed, i, r) and the criterion generator seeded with (seed + 1, i, r), as run_training does.
    """
    train = config["train"]
    dataset = CocoInstances(
        config["data"]["train_json"],
        config["data"]["train_images"],
        scales=train["scales"],
        max_size=train["max_size"],
        flip=train["flip"],
    )
    torch.manual_seed(train["seed"])
    model = build_model(config["model"])
    criterion = build_criterion(config)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(
        params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(train))
    keys = {
        r: list(IterationSampler(len(dataset), 0, train["iters"], train["seed"], r, WORLD))
        for r in ranks
    }
    mean_losses = []
    for i in range(train["iters"]):
        grads, losses = [], []
        for r in ranks:
            sample = dataset[keys[r][i]]
            generator = torch.Generator().manual_seed(step_seed(train["seed"] + 1, i, r))
            target = {k: sample[k] for k in ("boxes", "masks", "iscrowd")}
            loss = criterion(model(sample["image"][None]), target, generator)["loss"]
            grads.append(torch.autograd.grad(loss, params))
            losses.append(loss.item())
        for p, *per_rank in zip(params, *grads, strict=True):
            p.grad = torch.stack(per_rank).mean(0)
        optimizer.step()
        scheduler.step()
        mean_losses.append(sum(losses) / len(losses))
    return model.state_dict(), mean_losses


def test_two_gloo_processes_equal_one_process_averaging_their_gradients(ddp_config, torchrun_run):
    config = load_config(ddp_config)
    expected, mean_losses = _averaged_gradient_reference(config, list(range(WORLD)))
    got = weights(torchrun_run / "model_final.pt")
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6, msg=key)
    # not vacuous: the second rank's images move the weights well beyond that tolerance
    alone, _ = _averaged_gradient_reference(config, [0])
    assert any(
        not torch.allclose(alone[key], expected[key], rtol=1e-3, atol=1e-5) for key in expected
    )
    # rank 0 alone wrote the log, with the losses averaged over both ranks
    log = pd.read_csv(torchrun_run / "train_log.csv")
    assert list(log["iteration"]) == list(range(1, ITERS + 1))
    assert log["loss"].tolist() == pytest.approx(mean_losses, rel=1e-4)
    assert [p.name for p in checkpoint.list_checkpoints(torchrun_run)] == [
        "model_0000004.pt",
        "model_0000008.pt",
    ]
    assert checkpoint.load(torchrun_run / "checkpoints" / "model_0000008.pt")["world_size"] == 2


def _srun_tasks(config: Path, out: Path, port: int, *extra: str) -> list[subprocess.Popen]:
    """Two `ifcn train` processes started the way `srun --ntasks 2` starts them (no torchrun)."""
    tasks = []
    for rank in range(WORLD):
        env = clean_env(
            SLURM_JOB_ID="1",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_STEP_NUM_TASKS=str(WORLD),
            SLURM_STEP_NUM_NODES="1",
            MASTER_PORT=str(port),
        )
        command = [sys.executable, "-m", "ifcn", "train", "--config", str(config)]
        command += ["--out", str(out), "--device", "cpu", *extra]
        tasks.append(
            subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    return tasks


def _wait_for_log_row(log: Path, iteration: int, tasks: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) > iteration:
            return
        assert all(t.poll() is None for t in tasks), "training ended before it was signalled"
        time.sleep(0.02)
    raise AssertionError(f"no log row {iteration} in {log}")


@pytest.mark.slow
def test_sigterm_to_one_srun_task_stops_all_at_one_checkpoint_and_resumes_exactly(
    ddp_config, torchrun_run, tmp_path
):
    out = tmp_path / "run"
    tasks = _srun_tasks(ddp_config, out, free_port())
    try:
        _wait_for_log_row(out / "train_log.csv", 2, tasks)
        tasks[1].send_signal(signal.SIGTERM)  # rank 1 alone: the flag must reach rank 0 too
        errors = [t.communicate(timeout=120)[1].decode().strip().splitlines()[-1] for t in tasks]
    finally:
        for task in tasks:
            task.kill()
    assert [t.returncode for t in tasks] == [143, 143], errors
    stopped = [re.search(r"stopped by SIGTERM at iteration (\d+)", line) for line in errors]
    assert all(stopped), errors
    iteration = int(stopped[0].group(1))
    assert int(stopped[1].group(1)) == iteration and 2 <= iteration < ITERS
    path = checkpoint.checkpoint_path(out, iteration)
    assert checkpoint.latest_checkpoint(out) == path
    assert checkpoint.load(path)["iteration"] == iteration
    assert not (out / "model_final.pt").exists()

    tasks = _srun_tasks(ddp_config, out, free_port(), "--resume", "auto")
    try:
        outputs = [t.communicate(timeout=120) for t in tasks]
    finally:
        for task in tasks:
            task.kill()
    assert [t.returncode for t in tasks] == [0, 0], [e.decode()[-2000:] for _, e in outputs]
    a, b = weights(torchrun_run / "model_final.pt"), weights(out / "model_final.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    columns = ["iteration", "loss", "loss_objectness", "loss_mask", "num_pos", "num_neg"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "train_log.csv")[columns],
        pd.read_csv(torchrun_run / "train_log.csv")[columns],
    )


def _forked(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    """`ifcn train --nproc-per-node 2`, without OMP_NUM_THREADS: the launcher must give each
    rank one thread, as torchrun does."""
    env = clean_env()
    del env["OMP_NUM_THREADS"]
    command = [sys.executable, "-m", "ifcn", "train", "--config", str(config), "--out", str(out)]
    command += ["--device", "cpu", "--nproc-per-node", str(WORLD), *extra]
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_forked_ranks_stop_together_on_the_launchers_sigterm_and_train_as_torchrun(
    ddp_config, torchrun_run, tmp_path
):
    """SIGTERM to the launcher alone (a user's kill, Snakemake's cancel): every rank stops at
    one checkpoint as under torchrun, and the resumed run ends with torchrun's weights."""
    out = tmp_path / "run"
    launcher = _forked(ddp_config, out)
    try:
        _wait_for_log_row(out / "train_log.csv", 2, [launcher])
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 143, err[-3000:]
    # both ranks write to the launcher's stderr: one's line may follow rank 0's progress bar
    stopped = re.findall(r"stopped by SIGTERM at iteration (\d+)", err)
    assert len(stopped) == WORLD and len(set(stopped)) == 1, err[-3000:]
    iteration = int(stopped[0])
    assert 2 <= iteration < ITERS and "Traceback" not in err
    assert checkpoint.latest_checkpoint(out) == checkpoint.checkpoint_path(out, iteration)

    launcher = _forked(ddp_config, out, "--resume", "auto")
    try:
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    assert f"ifcn train: {WORLD} process(es) x 1 image per step" in err
    _equal_to_torchrun(out, torchrun_run)


def _slurm_env(cluster: Cluster) -> dict[str, str]:
    """The test's environment for the cluster, without OMP_NUM_THREADS: ifcn itself must give
    each srun task one thread, as torchrun does (else the weights differ from torchrun's)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = cluster.env(clean_env(PYTHONPATH=str(ROOT), PATH=path))
    del env["OMP_NUM_THREADS"]
    return env


def _equal_to_torchrun(out: Path, torchrun_run: Path) -> None:
    a, b = weights(torchrun_run / "model_final.pt"), weights(out / "model_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    columns = ["iteration", "loss", "loss_objectness", "loss_mask", "num_pos", "num_neg"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "train_log.csv")[columns],
        pd.read_csv(torchrun_run / "train_log.csv")[columns],
    )


def test_srun_two_tasks_take_rank_world_and_address_from_slurm_and_train_as_torchrun(
    slurm_cluster, ddp_config, torchrun_run, tmp_path
):
    """`srun --ntasks 2` on a real cluster, no MASTER_ADDR: the tasks find each other at
    127.0.0.1 on the port of their job id and train the torchrun run's weights, bit for bit."""
    out = tmp_path / "run"
    command = ["srun", "--ntasks", str(WORLD), "--overcommit", "--kill-on-bad-exit=1"]
    command += [sys.executable, "-m", "ifcn", "train", "--config", str(ddp_config)]
    command += ["--out", str(out), "--device", "cpu"]
    done = subprocess.run(
        command, env=_slurm_env(slurm_cluster), cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ifcn train: {WORLD} process(es) x 1 image per step" in done.stderr
    _equal_to_torchrun(out, torchrun_run)


def test_the_documented_slurm_recipe_runs_as_a_batch_job_and_trains_as_torchrun(
    slurm_cluster, ddp_config, torchrun_run, tmp_path
):
    """docs/slurm.md's recipe without torchrun (MASTER_ADDR from the job's node list, the
    port from its id), as a batch job of one node and two CPU tasks instead of four GPUs."""
    recipe = re.search(
        r"```\n(export MASTER_ADDR=.*?)```", (ROOT / "docs/slurm.md").read_text(), re.S
    )
    assert recipe, "docs/slurm.md lost its srun recipe"
    script = recipe.group(1)
    ours = f"--config {ddp_config} --out {tmp_path / 'run'}"
    for doc, here in (
        ("--ntasks-per-node 4 --gpus-per-task 1", f"--ntasks-per-node {WORLD}"),
        ("--config config/coco.yaml --out results/coco/train", ours),
    ):
        assert doc in script, doc
        script = script.replace(doc, here)
    (tmp_path / "job.sh").write_text("#!/bin/bash\nset -euo pipefail\n" + script)
    command = ["sbatch", "--parsable", "--nodes", "1", "--ntasks-per-node", str(WORLD)]
    command += ["--overcommit", "--output", str(tmp_path / "job.log"), str(tmp_path / "job.sh")]
    submitted = subprocess.run(
        command, env=_slurm_env(slurm_cluster), cwd=ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    job = slurm_cluster.wait(submitted.stdout.strip())
    log = (tmp_path / "job.log").read_text()
    assert job["JobState"] == "COMPLETED", log[-3000:]
    assert f"ifcn train: {WORLD} process(es) x 1 image per step" in log
    _equal_to_torchrun(tmp_path / "run", torchrun_run)
