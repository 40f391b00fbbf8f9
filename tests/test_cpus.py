"""The CPUs a stage sizes its pools and torch's threads to: affinity, bounded by a cgroup quota."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ifcn import cpus
from tests.configs import ROOT


def _v2(root: Path, quotas: dict[str, str]) -> None:
    (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for path, quota in quotas.items():
        (root / path).mkdir(parents=True, exist_ok=True)
        (root / path / "cpu.max").write_text(quota + "\n")


def test_the_smallest_v2_quota_of_the_cgroup_and_those_above_it(tmp_path):
    root = tmp_path / "cgroup"
    _v2(root, {"": "max 100000", "ci": "300000 100000", "ci/job": "150000 100000"})
    (tmp_path / "self").write_text("0::/ci/job\n")
    assert cpus.cpu_quota(root, tmp_path / "self") == 1.5
    (root / "ci" / "job" / "cpu.max").write_text("max 100000\n")
    assert cpus.cpu_quota(root, tmp_path / "self") == 3.0  # the parent's binds
    (root / "ci" / "cpu.max").write_text("max 100000\n")
    assert cpus.cpu_quota(root, tmp_path / "self") is None


def test_a_cgroup_path_the_mount_does_not_show_falls_back_to_the_folders_above(tmp_path):
    """In a container the host's path of its cgroup is listed, and its own cgroup is the root."""
    root = tmp_path / "cgroup"
    _v2(root, {"": "200000 100000"})
    (tmp_path / "self").write_text("0::/kubepods/pod1/abc\n")
    assert cpus.cpu_quota(root, tmp_path / "self") == 2.0


def test_a_v1_cpu_controller_beside_a_unified_hierarchy(tmp_path):
    root = tmp_path / "cgroup"
    (root / "cpu,cpuacct" / "slurm" / "job_7").mkdir(parents=True)
    (root / "unified").mkdir()
    for folder, quota in (("cpu,cpuacct", "-1"), ("cpu,cpuacct/slurm/job_7", "400000")):
        (root / folder / "cpu.cfs_quota_us").write_text(quota + "\n")
        (root / folder / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "self").write_text("4:cpu,cpuacct:/slurm/job_7\n3:memory:/x\n0::/\n")
    assert cpus.cpu_quota(root, tmp_path / "self") == 4.0
    (root / "cpu,cpuacct" / "slurm" / "job_7" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.cpu_quota(root, tmp_path / "self") is None
    assert cpus.cpu_quota(root, tmp_path / "missing") is None


@pytest.mark.parametrize(("quota", "expected"), [(None, 6), (2.5, 3), (0.2, 1), (64.0, 6)])
def test_available_cpus_is_the_affinity_bounded_by_the_quota(monkeypatch, quota, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(cpus, "cpu_quota", lambda: quota)
    assert cpus.available_cpus() == expected


class _Torch:
    """What limit_threads uses of torch."""

    def __init__(self, threads: int):
        self.threads = threads

    def get_num_threads(self) -> int:
        return self.threads

    def set_num_threads(self, threads: int) -> None:
        self.threads = threads


def test_torch_threads_are_limited_only_by_a_binding_quota_and_never_over_the_users(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch = _Torch(6)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(cpus, "cpu_quota", lambda: None)
    cpus.limit_threads()
    assert torch.threads == 6
    monkeypatch.setattr(cpus, "cpu_quota", lambda: 2.0)
    cpus.limit_threads()
    assert torch.threads == 2 and "OMP_NUM_THREADS" not in os.environ  # launchers read it
    torch.threads = 6
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's
    cpus.limit_threads()
    assert torch.threads == 6


def test_a_stage_in_a_cgroup_with_a_cpu_quota_sizes_its_pools_and_threads_to_it():
    """A real cgroup (v1's cpu controller or v2) with half a CPU: the process sees one CPU, and
    torch runs one thread once the CLI has imported a stage."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a quota of half a CPU would change nothing")
    base = Path("/sys/fs/cgroup/cpu")
    v1 = base.is_dir()
    if not v1:
        base = Path("/sys/fs/cgroup")
    group = base / f"ifcn-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        if v1:
            (group / "cpu.cfs_quota_us").write_text("50000")
        else:
            (group / "cpu.max").write_text("50000 100000")
    except OSError as exc:
        pytest.skip(f"no cgroup of its own here ({exc.strerror}): needs root and a cgroup mount")
    script = (
        "import torch; from ifcn import cpus; before = torch.get_num_threads(); "
        "cpus.limit_threads(); print(cpus.available_cpus(), torch.get_num_threads(), before)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
            env=env | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.SubprocessError as exc:  # v2 without the cpu controller delegated
        pytest.skip(f"cannot join a cgroup of its own here: {exc}")
    finally:
        group.rmdir()
    assert done.returncode == 0, done.stderr
    available, threads, before = map(int, done.stdout.split())
    assert (available, threads) == (1, 1), (available, threads, before)
