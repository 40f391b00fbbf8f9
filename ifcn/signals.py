"""How a stage ends on SIGTERM (SLURM's and Snakemake's cancel) or SIGINT (Ctrl-C), DESIGN §11.

`ifcn.cli` calls `install()` before it imports a stage: the first of the two signals raises
`Stopped` in the main thread wherever it is, so every `with` block on the way out runs (atomic
writers remove their temporaries, pools and DataLoaders end their workers), and the CLI prints
one line and exits 128 + the signal's number (143, 130). Signals that arrive while it unwinds
are ignored, so that the clean-up completes; a worker ending with the stop is expected then, so
torch's SIGCHLD check (a DataLoader worker that died) is switched off too.

Four ways a stop could get lost, or hang the stage, are closed here:
- The kernel may hand a process's signal to any of its threads, Python runs handlers in the
  main thread only, and a main thread waiting on a lock (a pool's next result) is not woken by
  a signal another thread took: a forwarder thread sends it to the main thread (`_forward`).
- A handler that runs inside a `__del__` or a fork hook has its exception printed and dropped:
  the stop is raised again a moment later (`_unraisable`).
- Python drops the signals a forked child receives while it starts up: signals wait while a
  process forks, and are handled once the child runs Python.
- A stop raised in a lock wrapper written in Python (threading's Condition) just after it took
  the lock, before the `with` that releases it began, would leave the lock held, and a thread
  that waits for it (a pool's result handler) waits forever: it is raised a moment later.

A forked child's stack holds its parent's frames, down to the call of `os.fork()`: a stop
raised in the child where no `try` of its own catches it (before multiprocessing's launch
enters its `try`, in a fork hook, after its target has returned) would unwind into them, and
the child would go on running its parent's code: a second copy of the caller, of pytest in
the tests. A child ends with `os._exit` there instead.

SLURM signals every process of a job, a terminal or Snakemake the whole process group, so the
processes a stage starts see the signal too, and must end without a traceback and without
leaving their pool unable to shut down:
- DataLoader workers raise `Stopped` inside torch's worker loop, which exits quietly (status 0)
  on a KeyboardInterrupt (`dataloader_worker`; training's workers ignore SIGTERM instead, to
  finish the step that training checkpoints before it stops: `SignalStop`).
- Pool workers and helper processes ignore SIGINT (the parent acts on it) and end on SIGTERM
  with a quiet SystemExit, from the scheduler or from their pool's shutdown. A worker inside an
  operation on the pool's queues finishes it first (for up to `STOP_GRACE` seconds): a message
  cut short, or a queue lock taken and never released, would leave the parent's pool shutdown
  waiting forever, which is what the default action of SIGTERM risks. Forked processes get
  this from the handler they inherit; spawned ones are started with the signals `held()` and
  call `worker_process()` first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Condition as MultiprocessingCondition
from multiprocessing.synchronize import SemLock

from ifcn.errors import IfcnError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_GRACE = 3.0  # seconds a worker may take to finish a queue operation once told to stop
TICK = 0.1  # seconds between a worker's looks at a stop it could not act on at once


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGINT: the stage stops, cleaning up."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class SignalStop(IfcnError):
    """A stage that stopped itself on a signal after saving its state (training's checkpoint):
    its one line says what was kept, and it exits as a stop (128 + the signal's number)."""

    def __init__(self, message: str, path: object | None = None, signum: int = signal.SIGTERM):
        super().__init__(message, path)
        self.exit_status = 128 + signum


# The process that installed the handlers, the signal that stopped it (the first one), a stop
# whose exception was swallowed and is to be raised again, the write end of the forwarder's
# pipe, and the SIGCHLD handler (torch's) that the stop took away, to put back with the others.
_owner: list[int] = []
_stopping: list[int] = []
_again: list[bool] = []
_wakeup: list[int] = []
_pipe: list[int] = []  # the forwarder's pipe, which a forked child closes
_forked_at: list = []  # in a forked child: the frame that called os.fork(), its parent's
_removed: dict[int, object] = {}
_previous_hook: list[Callable] = [sys.__unraisablehook__]
_AGAIN = 64  # added to a signal's number: the forwarder is asked to send it again


# Lock wrappers written in Python: a stop raised in one after its lock is taken (before the
# `with` that releases it has begun) or before its release would leave the lock held, and a
# thread that waits for it (a pool's result handler) would wait forever.
_LOCK_WRAPPERS = {
    code
    for kind in (threading.Condition, SemLock, MultiprocessingCondition)
    for code in (kind.__enter__.__code__, kind.__exit__.__code__)
}


def _stop(signum, frame) -> None:
    if _owner and os.getpid() != _owner[0]:
        _child_stop(signum, frame)
        return
    if _stopping and not _again:
        return  # the first one's clean-up is running: let it complete
    if not _stopping:
        _stopping.append(signum)
        child = signal.getsignal(signal.SIGCHLD)
        if callable(child):  # torch's check: a worker ending now is no error
            _removed[signal.SIGCHLD] = child
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _again.clear()
    if frame is not None and frame.f_code in _LOCK_WRAPPERS:
        _raise_later()
        return
    raise Stopped(_stopping[0])


def _raise_later() -> None:
    """The forwarder sends the stop again a moment later, and it is raised then."""
    with contextlib.suppress(OSError):  # first: a signal handled in it must not raise
        os.write(_wakeup[-1], bytes([_stopping[0] + _AGAIN]))
    _again.append(True)


def _ignore(signum, frame) -> None:
    """A signal while the handlers are put back, once the stage is over."""


def _child_stop(signum, frame) -> None:
    """The handler a forked process inherited: a DataLoader worker's loop ends on `Stopped`;
    any other child is a worker of a pool, or about to become one."""
    for caller in _own_frames(frame):
        if caller.f_code.co_name == "_worker_loop" and "torch" in caller.f_code.co_filename:
            raise Stopped(signum)
    if signum == signal.SIGTERM:
        _exit_quietly(signum, frame)


def _hold() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def _release() -> None:
    """After a fork: the signals that waited are handled now (in a fork hook, which swallows
    what they raise: `_unraisable` raises them again)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _release_child() -> None:
    _forked_at[:] = [sys._getframe(1)]
    signal.set_wakeup_fd(-1)  # the parent's forwarder is not this process's
    for fd in _pipe:
        with contextlib.suppress(OSError):
            os.close(fd)
    _pipe.clear()
    _release()


def _forward(read_fd: int, main: int) -> None:
    """Send the main thread each SIGTERM and SIGINT that reached the process. The kernel may
    hand a process's signal to any of its threads, Python runs handlers in the main thread
    only, and a main thread waiting on a lock (a pool's next result) is woken only by a signal
    it takes itself; even then, one that comes just before it starts to wait is missed, and
    the copy sent from here comes later. The main thread's copies come back and are dropped.
    A stop that was swallowed (`_unraisable`) is sent again the same way."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # this thread takes none itself
    echoes = dict.fromkeys(SIGNALS, 0)
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for byte in data:
            if byte == 0:  # restore(): the stage is over
                return
            signum = byte - _AGAIN if byte > _AGAIN else byte
            if signum not in echoes:
                continue
            if byte == signum and echoes[signum]:
                echoes[signum] -= 1
                continue
            if byte != signum:  # once the hook that asked has returned
                for _ in range(200):
                    if _again:
                        break
                    time.sleep(0.005)
                time.sleep(0.005)
            echoes[signum] += 1
            signal.pthread_kill(main, signum)


def _unraisable(unraisable) -> None:
    """A stop swallowed where Python cannot raise (a fork hook, a `__del__`) is raised again a
    moment later, in whatever runs then, and nothing is printed; nor is what the objects the
    stop left half made raise in their `__del__` while it unwinds."""
    if isinstance(unraisable.exc_value, Stopped) and _stopping and os.getpid() == _owner[0]:
        _raise_later()
    elif isinstance(unraisable.exc_value, Stopped) and _owner and os.getpid() != _owner[0]:
        # a DataLoader worker's stop raised in a weakref callback or `__del__`: sent again,
        # to end its loop where it can raise, and nothing printed
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), unraisable.exc_value.signum)
    elif isinstance(unraisable.exc_value, SystemExit) and _exiting:
        _tick_on()
        _exiting.clear()
    elif not _stopping:
        _previous_hook[-1](unraisable)
    # else: an error in a `__del__` of what the stop interrupted (a DataLoader half made)


def requested() -> Stopped | None:
    """The stop a signal asked for, if it is unwinding or was swallowed on the way."""
    return Stopped(_stopping[0]) if _stopping else None


def install() -> Callable[[], None]:
    """Make SIGTERM and SIGINT raise `Stopped` (in the main thread; elsewhere nothing is done).
    Returns the function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _previous_hook.append(sys.unraisablehook)
    if not _owner:
        os.register_at_fork(before=_hold, after_in_parent=_release, after_in_child=_release_child)
    _owner[:] = [os.getpid()]
    _stopping.clear()
    sys.unraisablehook = _unraisable
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _wakeup.append(write_fd)
    _pipe[:] = [read_fd, write_fd]
    forwarder = threading.Thread(
        target=_forward, args=(read_fd, threading.get_ident()), name="ifcn-signals", daemon=True
    )
    forwarder.start()
    for signum in SIGNALS:
        signal.signal(signum, _stop)

    def restore() -> None:
        # the forwarder first: a signal it sends after the handlers are back would be theirs
        _again.clear()
        for signum in SIGNALS:
            signal.signal(signum, _ignore)
        signal.set_wakeup_fd(previous_fd)
        _wakeup.pop()
        os.write(write_fd, b"\0")  # the forwarder's end (a child may still hold the pipe open)
        forwarder.join()
        _pipe.clear()  # closed: their numbers will be other files' (a pool's pipes) in a fork
        os.close(write_fd)
        os.close(read_fd)
        previous.update(_removed)
        _removed.clear()
        _stopping.clear()
        sys.unraisablehook = _previous_hook.pop()
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    return restore


# Where a worker's stop would break the queues it shares with the other processes: inside the
# receiving or the sending of a message (a message cut short desynchronises the pipe for every
# other reader), between taking a queue's lock and entering the `with` that releases it, or in
# the release. Python runs a handler between bytecodes, so where a read has just returned data
# cannot be told from where it waits: a receive is always left to finish (an idle worker's
# ends when the pool's shutdown sends it its sentinel).
_QUEUE_CODES = {
    Connection.send.__code__,
    Connection.send_bytes.__code__,
    Connection._recv_bytes.__code__,
    SemLock.__exit__.__code__,
}
_exit_at: list[float] = []  # a worker told to stop inside one: when it stops regardless
_exiting: list[bool] = []


def _in_queue_operation(frame) -> bool:
    for caller in _own_frames(frame):
        code = caller.f_code
        if code in _QUEUE_CODES:
            return True
        if code is SemLock.__enter__.__code__:
            lock = caller.f_locals.get("self")
            if lock is None or lock._semlock._is_mine():
                return True  # a lock still waited for is left safely: its wait just fails
    return False


def _own_frames(frame) -> Iterator:
    """`frame` and its callers, up to the frames a fork inherited (see the module's docstring)."""
    while frame is not None and not (_forked_at and frame is _forked_at[0]):
        yield frame
        frame = frame.f_back


def _exit_quietly(signum, frame) -> None:
    if _exiting:
        return
    if not _exit_at:
        _exit_at.append(time.monotonic() + STOP_GRACE)
    if _in_queue_operation(frame) and time.monotonic() < _exit_at[0]:
        _tick_on()  # the next tick looks again
        return
    if not any(f.f_code is BaseProcess.run.__code__ for f in _own_frames(frame)):
        os._exit(128 + signal.SIGTERM)  # outside the target, whose caller makes it the status
    _exiting.append(True)
    raise SystemExit(128 + signal.SIGTERM)


def _tick(signum, frame) -> None:
    if _exit_at and signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, []):
        _exit_quietly(signal.SIGTERM, frame)  # not inside `held()`: it waits until that ends


def _tick_on() -> None:
    """SIGALRM every `TICK` seconds. Each ends a wait on a lock, so that a SIGTERM that came
    just before the wait began (and so did not end it) is handled: Python retries what the
    tick interrupts, and a worker's C code (HDF5, pycocotools, a one-thread torch) reads
    files, which signals do not interrupt."""
    if signal.getsignal(signal.SIGALRM) is not _tick:
        signal.signal(signal.SIGALRM, _tick)
        signal.setitimer(signal.ITIMER_REAL, TICK, TICK)


def dataloader_worker(worker_id: int) -> None:
    """`worker_init_fn` of a DataLoader: SIGTERM raises `Stopped` in its loop, which ends
    quietly. torch's own handler, set just before, dies of a SIGTERM that does not come from
    the main process (the scheduler's), and the main process then reports the dead worker as
    an error instead of stopping."""
    signal.signal(signal.SIGTERM, _stop)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """The signals wait inside the block (they are handled after it). Processes spawned in it
    start with them held, until `worker_process()`, and so do threads started in it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def worker_process() -> None:
    """First call of a pool worker or helper process (needed where it is spawned, harmless
    where it is forked): SIGINT ignored, SIGTERM a quiet exit once out of its queues."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    sys.unraisablehook = _unraisable  # a stop swallowed in a `__del__` is raised again
    _tick_on()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # held while it was spawned
