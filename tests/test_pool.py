"""The stages' process pool (ifcn.pool): a worker that dies fails the stage at once; before,
multiprocessing's pool waited forever for the task the dead worker held."""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import time

import pytest

from ifcn.data.formats import map_images
from ifcn.errors import IfcnError
from ifcn.pool import Pool


def _square(x: int) -> int:
    return x * x


def _dies_at(x: int, victim: int = 5, signum: int = signal.SIGKILL) -> int:
    if x == victim:
        os.kill(os.getpid(), signum)
        time.sleep(10)
    return x * x


def _segfaults_at_5(x: int) -> int:
    faulthandler.disable()  # pytest's, inherited: it would print the worker's stack
    return _dies_at(x, signum=signal.SIGSEGV)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_results_are_multiprocessings_when_no_worker_dies(method):
    context = multiprocessing.get_context(method)
    with Pool(2, context=context) as pool:
        assert pool.map(_square, range(20), chunksize=3) == [x * x for x in range(20)]
        assert list(pool.imap(_square, range(20), chunksize=2)) == [x * x for x in range(20)]
        assert pool.get(pool.map_async(_square, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("how", ["map", "imap", "map_async"])
def test_a_killed_worker_fails_each_way_of_waiting_at_once(how):
    start = time.monotonic()
    with Pool(2) as pool, pytest.raises(IfcnError, match=r"was killed by SIGKILL .*out-of-memory"):
        if how == "map":
            pool.map(_dies_at, range(20), chunksize=1)
        elif how == "imap":
            list(pool.imap(_dies_at, range(20), chunksize=1))
        else:
            pool.get(pool.map_async(_dies_at, range(20), chunksize=1))
    assert time.monotonic() - start < 8  # not the victim's 10 s sleep, nor forever


def test_a_crashed_worker_is_named_by_its_signal():
    with Pool(2) as pool, pytest.raises(IfcnError, match="died of SIGSEGV"):
        pool.map(_segfaults_at_5, range(20), chunksize=1)


def test_the_data_doors_parallel_map_fails_instead_of_hanging():
    """`ifcn data check` and `data convert` map their images through it: with a worker
    killed they hung (reproduced by kill -9 of a worker of `ifcn data check`)."""
    with pytest.raises(IfcnError, match="was killed by SIGKILL"):
        map_images(_dies_at, list(range(40)), total=40, workers=2, desc="check", quiet=True)
