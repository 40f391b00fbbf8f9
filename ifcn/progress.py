"""Progress of long stages: tqdm's bar on a terminal, timestamped lines in a log file.

tqdm redraws its bar with carriage returns; in a Snakemake or SLURM log, where stderr is a
file, a whole run then becomes one line of tens of kilobytes that no one can read or grep.
`progress_bar` takes tqdm's arguments and returns tqdm itself when the stream is a terminal,
and otherwise a `LogProgress`, which writes one complete line every ``every_seconds`` (or
every ``every_steps`` updates, whichever comes first) and a last one when it closes::

    2025-05-02 14:03:11 train:  12% 4800/40000 [31:02<3:47:36,  2.58it/s, loss=0.412, pos=38]

The line is tqdm's own meter without the bar, so both read the same.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from numbers import Number
from typing import IO, Any

from tqdm import tqdm

# A log line at least this often by default: a few hundred lines for a day-long run.
EVERY_SECONDS = 30.0


def progress_bar(
    iterable: Iterable | None = None,
    *,
    file: IO[str] | None = None,
    every_seconds: float = EVERY_SECONDS,
    every_steps: int | None = None,
    **kwargs: Any,
) -> tqdm | LogProgress:
    """tqdm(iterable, **kwargs) on a terminal, else a `LogProgress` with the same interface.

    ``file`` is the stream written to (stderr by default, as tqdm); ``every_seconds`` and
    ``every_steps`` set how often a log line is written when it is not a terminal.
    """
    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(iterable, file=stream, **kwargs)
    return LogProgress(
        iterable, file=stream, every_seconds=every_seconds, every_steps=every_steps, **kwargs
    )


class LogProgress:
    """tqdm's interface (iteration, ``update``, ``set_postfix``, ``close``, ``with``) writing
    whole lines with a timestamp instead of redrawing a bar.

    tqdm arguments that only shape a bar (``dynamic_ncols``, ``leave``, ``ncols``, ``position``,
    ...) are accepted and ignored: a log keeps every line, including the last.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        desc: str | None = None,
        total: float | None = None,
        disable: bool = False,
        unit: str = "it",
        unit_scale: bool | float = False,
        unit_divisor: float = 1000,
        initial: float = 0,
        file: IO[str] | None = None,
        every_seconds: float = EVERY_SECONDS,
        every_steps: int | None = None,
        postfix: dict | str | None = None,
        **_bar_only: Any,
    ):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.disable = disable
        self.unit, self.unit_scale, self.unit_divisor = unit, unit_scale, unit_divisor
        self.initial = self.n = initial
        self.file = file
        self.every_seconds = every_seconds
        self.every_steps = every_steps
        self.postfix = ""
        self.start_t = self.last_print_t = time.monotonic()
        self.last_print_n = initial
        self.closed = False
        if postfix is not None:
            if isinstance(postfix, dict):
                self.set_postfix(**postfix)
            else:
                self.set_postfix_str(postfix)
        if not disable:
            self._write(self.start_t)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is not None:
            return int(self.total)
        return len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more; write a line if the period since the last one has passed."""
        self.n += n
        if self.disable or self.closed:
            return
        now = time.monotonic()
        due = now - self.last_print_t >= self.every_seconds
        if self.every_steps is not None:
            due = due or self.n - self.last_print_n >= self.every_steps
        if due:
            self._write(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        """Values shown after the meter (``loss=0.41``), as tqdm formats them; shown on the
        next line written, not on a line of their own (``refresh`` is accepted for tqdm's
        signature)."""
        values = dict(ordered_dict or {}, **kwargs)
        for key, value in values.items():
            if isinstance(value, Number):
                values[key] = tqdm.format_num(value)
        self.postfix = ", ".join(f"{key}={str(value).strip()}" for key, value in values.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def refresh(self) -> None:
        """A no-op: lines are written on their period (tqdm redraws here)."""

    def close(self) -> None:
        """Write the last line (the final count and rate) once."""
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n != self.last_print_n:
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        meter = tqdm.format_meter(
            self.n,
            self.total,
            now - self.start_t,
            ncols=0,
            prefix=self.desc,
            unit=self.unit,
            unit_scale=self.unit_scale,
            unit_divisor=self.unit_divisor,
            postfix=self.postfix or None,
            initial=self.initial,
        )
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        stream = sys.stderr if self.file is None else self.file
        stream.write(f"{stamp} {meter}\n")
        stream.flush()
        self.last_print_t, self.last_print_n = now, self.n
