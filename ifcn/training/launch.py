"""`ifcn train --nproc-per-node N`: the ranks of one node forked from one process.

torchrun starts each rank as a new interpreter, which imports torch, torchvision and ifcn again
(~0.4 GiB and a few seconds a rank) beside a launcher that imported torch too. Forked after the
imports, the ranks share those pages copy-on-write, and their start is immediate: two ranks of a
COCO-sized training hold 1.13x one rank's memory instead of torchrun's 1.86x (docs/results.md).
The environment each rank gets is torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, one compute thread unless OMP_NUM_THREADS says otherwise), so the
training code cannot tell the two apart and trains the same weights.

What torchrun does besides is done here too: a signal to the launcher (SIGTERM from a scheduler,
Ctrl-C) is passed to every rank, which stops as it would alone (training checkpoints); when a
rank fails, the others are stopped (SIGTERM, then SIGKILL after `GRACE` seconds), so none waits
for a dead peer; the launcher exits with the first failing rank's status. CUDA is never touched
before the fork (a CUDA context does not survive one): each rank initialises its own GPU.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

from ifcn import signals
from ifcn.atomic import remove_leftovers
from ifcn.errors import IfcnError
from ifcn.training.distributed import dist_info_from_env

GRACE = 30.0  # seconds the other ranks get to stop after one failed, before SIGKILL


def free_port() -> int:
    """A TCP port free on this machine now (the ranks' rendezvous on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_can_fork(nproc: int) -> None:
    if nproc < 1:
        raise IfcnError(f"--nproc-per-node {nproc}: give 1 or more processes")
    if dist_info_from_env().distributed:
        raise IfcnError(
            f"--nproc-per-node {nproc}: this process is already one rank of a launch (torchrun "
            "or srun set WORLD_SIZE / SLURM_STEP_NUM_TASKS); use one launcher, not two"
        )
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise IfcnError(f"--nproc-per-node {nproc}: CUDA is in use here and cannot be forked")


def _rank(rank: int, nproc: int, port: int, stage: Callable[[], int]) -> None:
    """The forked rank: torchrun's environment, its own stop handling, then the stage; never
    returns into the launcher's frames."""
    status = 1
    try:
        gc.enable()
        signals.install()  # this process owns its stops now
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        threads = os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch = sys.modules.get("torch")
        if torch is not None and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))  # torch was imported before the variable was set
        status = stage()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a bug: its traceback, as the stage alone would print it
        traceback.print_exc()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals.SIGNALS)  # no stop raised past here
        with contextlib.suppress(Exception):
            remove_leftovers()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def fork_ranks(nproc: int, stage: Callable[[], int]) -> int:
    """Run `stage` (a whole stage, returning its exit status) in `nproc` forked ranks; return
    the first failing rank's status (a signal's 128 + n), 0 when all succeed."""
    _check_can_fork(nproc)
    port = free_port()
    children: set[int] = set()  # the ranks still running, by pid
    forwarded: set[int] = set()

    def forward(signum, frame) -> None:
        if signum not in forwarded:  # once: ifcn.signals' forwarder thread repeats each one
            forwarded.add(signum)
            _tell(children, signum)  # each rank stops as it would alone

    first_failure = 0
    kill_at = None  # when the ranks told to stop after a failure are killed
    handlers = {}
    try:
        gc.disable()  # nothing collected between here and the forks: the pages stay shared
        gc.freeze()  # and no collection in a rank touches (and so copies) the launcher's objects
        for rank in range(nproc):
            pid = os.fork()
            if pid == 0:
                _rank(rank, nproc, port, stage)
            children.add(pid)
        handlers = {s: signal.signal(s, forward) for s in signals.SIGNALS}
        while children:
            for pid in list(children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
                children.remove(pid)
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
                if code and not first_failure:
                    first_failure = code
                    _tell(children, signal.SIGTERM)  # none waits for a dead peer
                    kill_at = time.monotonic() + GRACE
            if kill_at is not None and time.monotonic() > kill_at:
                _tell(children, signal.SIGKILL)
                kill_at = None
            if children:
                time.sleep(0.05)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if children:  # the launcher itself was stopped or failed: no rank outlives it
            _tell(children, signal.SIGKILL)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        gc.unfreeze()
        gc.enable()
    return first_failure


def _tell(children: set[int], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
