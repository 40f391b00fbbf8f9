"""How many CPUs a stage may use, for the size of its pools and of torch's thread team.

`os.cpu_count()` counts the host's cores. A process may run on fewer (SLURM's cpuset, taskset:
its affinity) and may get less time than its cores (a CPU quota: a container's `--cpus`, a CI
job, a cgroup of SLURM's `ConstrainCores` with shares). A pool or a thread team sized to the
host's 64 cores under a quota of 2 is not parallel but throttled: its threads wait on each other
across the quota's periods, and torch's OpenMP team turns a second of work into minutes.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_v2(folder: Path) -> float | None:
    """CPUs granted by `cpu.max` ("max 100000" or "200000 100000") in `folder`."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cpu_quota(root: Path = CGROUP_ROOT, cgroups: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU time this process's cgroups grant it, in CPUs (None: no quota): the smallest
    quota of its cgroup and of the cgroups above it, which bound it too (v2, or v1's cpu
    controller). A cgroup path the mount does not show (a container's view) falls back to the
    folders above it, down to the mount's root."""
    try:
        lines = cgroups.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:  # v2 (unified), alone or beside v1
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            read = _quota_v2
        elif "cpu" in controllers.split(","):
            base = root / controllers if (root / controllers).is_dir() else root / "cpu"
            read = _quota_v1
        else:
            continue
        folder = base / path.strip("/")
        while True:
            quota = read(folder)
            if quota is not None:
                found.append(quota)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(found) if found else None


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def available_cpus() -> int:
    """The CPUs this process may run on, bounded by its CPU quota (rounded up): at least 1."""
    count, quota = _affinity(), cpu_quota()
    return max(1, min(count, math.ceil(quota)) if quota is not None else count)


def limit_threads() -> None:
    """Fit torch's thread team (if torch is imported) to the CPUs a quota leaves, where the user
    set no thread count (OMP_NUM_THREADS). The variable is not set here: launchers read it as
    the user's (srun tasks and forked ranks take one thread when it is unset)."""
    torch = sys.modules.get("torch")
    if torch is None or "OMP_NUM_THREADS" in os.environ:
        return
    count = available_cpus()
    if count < _affinity() and torch.get_num_threads() > count:
        torch.set_num_threads(count)
