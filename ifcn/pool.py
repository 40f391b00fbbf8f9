"""The process pool of every stage: multiprocessing's, except that a worker that dies fails the
stage instead of hanging it.

multiprocessing.Pool replaces a worker that ends abruptly (killed by the kernel's out-of-memory
killer, or crashed in a C library), and waits forever for the result of the task it held: the
stage hangs, on a cluster until its time limit. Here every wait for results also looks at the
workers every `TICK` seconds, and a dead one is an `IfcnError` naming how it died (or, while a
signal stops the stage, that stop).
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import multiprocessing.pool
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ifcn import signals
from ifcn.errors import IfcnError

TICK = 0.2  # seconds between looks at the workers while results are awaited
STOP_WAIT = 2.0  # seconds a worker's stop may precede this process's own
# how a worker ends on SIGTERM or SIGINT: its quiet exit (ifcn.signals), or the signal itself
_STOPPED = {128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT}


def _how(exitcode: int) -> str:
    if exitcode == -signal.SIGKILL:
        return (
            "was killed by SIGKILL (the kernel's out-of-memory killer does this: give the stage "
            "more memory or fewer --workers)"
        )
    if exitcode < 0:
        return f"died of {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def _each(func: Callable, batch: list) -> list:
    return [func(item) for item in batch]


def _batched(iterable: Iterable, size: int) -> Iterator[list]:
    items = iter(iterable)
    while batch := list(itertools.islice(items, size)):
        yield batch


class Pool(multiprocessing.pool.Pool):
    """`multiprocessing.Pool(processes, initializer, initargs, context=...)` whose `map`, `imap`
    and `get` raise when a worker dies before the results are in."""

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        context: Any = None,
    ):
        super().__init__(processes, initializer, tuple(initargs), context=context)
        self._started = list(self._pool)  # the pool forgets a dead worker once it replaced it

    def check_workers(self) -> None:
        """IfcnError if a worker died (the stop itself if a signal is stopping the stage)."""
        for process in [*self._started, *list(self._pool)]:
            code = process.exitcode
            if code is None or code == 0:
                continue
            if code in _STOPPED:  # a stop of the whole process group: it reaches this process
                deadline = time.monotonic() + STOP_WAIT  # too, and raises `Stopped` in the wait
                while signals.requested() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
            stop = signals.requested()
            if stop is not None:
                raise stop
            raise IfcnError(f"a worker process (pid {process.pid}) {_how(code)}")

    def get(self, pending: multiprocessing.pool.AsyncResult) -> Any:
        """`pending.get()`, looking at the workers while it waits."""
        while not pending.ready():
            pending.wait(TICK)
            if not pending.ready():
                self.check_workers()
        return pending.get()

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return self.get(self.map_async(func, iterable, chunksize))

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        if chunksize <= 1:
            return self._watched(super().imap(func, iterable, 1))
        # in batches of our own: multiprocessing's imap of chunks returns a plain generator,
        # which cannot wait with a timeout
        batches = super().imap(functools.partial(_each, func), _batched(iterable, chunksize), 1)
        return (result for batch in self._watched(batches) for result in batch)

    def _watched(self, results: multiprocessing.pool.IMapIterator) -> Iterator:
        while True:
            try:
                yield results.next(TICK)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:
                self.check_workers()
