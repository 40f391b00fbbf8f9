"""Distributed plumbing in one place (torchvision references' `utils.init_distributed_mode`).

The same code runs three ways:
- one plain process (nothing in the environment): world size 1, no process group;
- under ``torchrun``: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT come from it;
- as the tasks of an ``srun`` step without torchrun (one task per GPU): SLURM_PROCID /
  SLURM_STEP_NUM_TASKS / SLURM_LOCALID, with MASTER_ADDR / MASTER_PORT from the environment
  (on one node they default to 127.0.0.1 and a port derived from the job id).
The step's task count is read rather than SLURM_NTASKS because a batch script also carries
SLURM_NTASKS (the job's) while it runs a single process: reading it there would wait forever
for ranks that never start. Under srun each process computes with one thread unless
OMP_NUM_THREADS says otherwise, as torchrun's processes do: without it every task takes all the
node's cores (oversubscribed several times over) and its sums come out in another order than
under torchrun. NCCL on CUDA, gloo on CPU. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ifcn.errors import IfcnError

# NCCL's default of 10 minutes is shorter than rank 0's check of every image of COCO on a slow
# file system while the others wait; 30 minutes (gloo's default, detectron2's) still ends a hang.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # none | torchrun | slurm

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env(environ: Mapping[str, str] | None = None) -> DistInfo:
    """Who this process is, from torchrun's variables, else an srun step's, else alone."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            launcher="torchrun",
        )
    step_tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if "SLURM_PROCID" in env and step_tasks > 1:
        return DistInfo(
            rank=int(env["SLURM_PROCID"]),
            world_size=step_tasks,
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            launcher="slurm",
        )
    return DistInfo()


def slurm_init_method(environ: Mapping[str, str] | None = None) -> str:
    """``tcp://MASTER_ADDR:MASTER_PORT`` for srun-launched tasks; IfcnError when it can't be known.

    One node: 127.0.0.1 and 20000 + job id mod 20000 unless set, so that two jobs sharing a node
    do not collide. Several nodes: MASTER_ADDR must be exported (docs/slurm.md shows how).
    """
    env = os.environ if environ is None else environ
    address = env.get("MASTER_ADDR")
    if address is None:
        if int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1"))) > 1:
            raise IfcnError(
                "MASTER_ADDR is not set for a multi-node srun launch: export "
                "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) "
                "(see docs/slurm.md)"
            )
        address = "127.0.0.1"
    port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "9500")) % 20000)
    return f"tcp://{address}:{port}"


# What a scheduler sets when it gives a job GPUs (SLURM's --gpus / --gres=gpu, or by hand).
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


def assigned_gpus(environ: Mapping[str, str] | None = None) -> str | None:
    """``NAME=value`` of the variable that says this job was given GPUs, or None.

    CUDA_VISIBLE_DEVICES empty, "-1" (or starting so) or "NoDevFiles" hides every GPU, and
    SLURM_GPUS_ON_NODE is a count, so "0" means none; SLURM_JOB_GPUS / SLURM_STEP_GPUS list
    GPU indices ("0" is the first GPU).
    """
    env = os.environ if environ is None else environ
    for name in GPU_VARIABLES:
        value = env.get(name, "").strip()
        if not value:
            continue
        if name == "CUDA_VISIBLE_DEVICES" and (value.startswith("-1") or value == "NoDevFiles"):
            continue
        if name == "SLURM_GPUS_ON_NODE" and value == "0":
            continue
        return f"{name}={value}"
    return None


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    return f"PyTorch (CUDA {torch.version.cuda}) finds no usable GPU (driver or device problem)"


def resolve_device(
    name: str,
    local_rank: int = 0,
    announce: bool = True,
    environ: Mapping[str, str] | None = None,
) -> torch.device:
    """The device of ``--device`` (auto, cpu, cuda or cuda:N); each process of a node takes its
    local GPU when none is named. A device that this machine lacks is an IfcnError.

    ``auto`` is CUDA when available, else the CPU, and says which on stderr (``announce``) —
    except on a job that was given GPUs (`assigned_gpus`): there a missing CUDA is a broken
    environment, and running on the CPU would silently take days, so it is an error.
    """
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        else:
            given = assigned_gpus(environ)
            if given is not None:
                raise IfcnError(
                    f"--device auto: this job was given GPUs ({given}) but {_no_cuda_reason()}; "
                    "fix the environment, or pass --device cpu to run on the CPU"
                )
            name = "cpu"
        device = resolve_device(name, local_rank, announce=False, environ=environ)
        if announce:
            print(f"ifcn: --device auto: running on {describe(device)}", file=sys.stderr)
        return device
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise IfcnError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise IfcnError(f"--device {name} asked for, but {_no_cuda_reason()}")
    count = torch.cuda.device_count()
    if device.index is None:
        return torch.device("cuda", local_rank % count)
    if device.index >= count:
        raise IfcnError(
            f"--device {name} asked for, but PyTorch sees {count} CUDA device(s): "
            f"cuda:0..cuda:{count - 1}"
        )
    return device


def describe(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (no CUDA device)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return "cpu (no CUDA device)" if not torch.cuda.is_available() else "cpu"
    return str(device)


def init_distributed_mode(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Start the process group under torchrun or srun; return who we are and our device.

    The device is not announced here: the trainers name it in the line that starts training,
    after their input is checked, so that bad input still gives one line.
    """
    info = dist_info_from_env()
    device = resolve_device(device_name, info.local_rank, announce=False)
    if not info.distributed:
        return info, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.launcher == "slurm" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)  # torchrun's default for its processes
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        extra: dict[str, Any] = {}
        if info.launcher == "slurm":
            extra = {
                "init_method": slurm_init_method(),
                "rank": info.rank,
                "world_size": info.world_size,
            }
        dist.init_process_group(
            backend=backend,
            device_id=device if backend == "nccl" else None,
            timeout=TIMEOUT,
            **extra,
        )
    dist.barrier()
    return info, device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity when not distributed), for logging."""
    if is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank raised the flag (e.g. a SIGTERM seen by one of them)."""
    if not is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` when not distributed)."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (a decision that only rank 0 takes, e.g. which checkpoint)."""
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0, device=device if device.type == "cuda" else None)
    return holder[0]


def run_on_main(fn: Callable[[], Any], device: torch.device) -> Any:
    """Rank 0 runs ``fn`` (a check of the data, a write); every rank gets its result, or raises
    its IfcnError, so that no rank waits at the next collective for one that has failed."""
    result, problem = None, None
    if not is_initialized() or dist.get_rank() == 0:
        try:
            result = fn()
        except IfcnError as exc:
            problem = exc
        except OSError as exc:
            problem = IfcnError(exc.strerror or str(exc), exc.filename)
    result, problem = broadcast_object((result, problem), device)
    if problem is not None:
        raise problem
    return result


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
