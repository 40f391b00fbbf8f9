"""The run's plots: recall against IoU (paper Fig. 6/7) of one evaluation and of the ablation
variants, and the training loss; and `save_png`, through which every figure and picture is
written (a temporary file renamed into place: no partial PNG on a crash).

Plots take plain data (arrays, dicts, a DataFrame), not the objects of the stages that made
it. They use matplotlib's object API and its Agg canvas, imported when a plot is drawn:
pyplot's import and figure manager would double the cost of `ifcn evaluate`, which takes about
a second, and `Plotter` imports matplotlib in a process of its own while evaluation starts.
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ifcn import atomic
from ifcn.errors import IfcnError
from ifcn.signals import STOP_GRACE, held, worker_process

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def save_png(picture: Figure | np.ndarray, path: str | Path) -> Path:
    """Write a matplotlib figure or an RGB uint8 array as PNG through a temporary file."""
    path = Path(path)
    if isinstance(picture, np.ndarray):
        import cv2

        ok, data = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        if not ok:
            raise IfcnError("cannot encode the picture as PNG", path)
        return atomic.write_bytes(path, data.tobytes())
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(picture).print_png(buffer)
    return atomic.write_bytes(path, buffer.getvalue())


def plot_recall_iou(
    thresholds: Sequence[float],
    recall: Mapping[int, np.ndarray],
    ar: Mapping[int, float],
    title: str,
    path: str | Path,
) -> Path:
    """Recall against IoU threshold, one curve per N (`recall[n]` at `thresholds`, -1 where
    there is no GT), AR in the legend (paper Fig. 6/7)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=120)
    # fixed margins: tight_layout would lay the text out twice, a third of the drawing time
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    for n, curve in recall.items():
        curve = np.where(curve >= 0, curve, np.nan)
        label = f"N={n}, AR={ar[n]:.3f}" if ar[n] >= 0 else f"N={n}"
        ax.plot(thresholds, curve, label=label)
    ax.set(xlim=(0.5, 1.0), ylim=(0, 1), xlabel="IoU", ylabel="recall")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return save_png(fig, path)


def plot_ablation(ars: Sequence[Mapping[str, Any]], variants: Sequence[str], path: Path) -> Path:
    """Recall against IoU of every variant (its ar.json as read), one panel per N (the paper's
    Fig. 6 layout)."""
    from matplotlib.figure import Figure

    ns = [key.split("@")[1] for key in ars[0] if key.startswith("AR@")]
    fig = Figure(figsize=(4.2 * len(ns), 3.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(ns), squeeze=False)[0]
    for ax, n in zip(axes, ns, strict=True):
        for variant, ar in zip(variants, ars, strict=True):
            recall = [float("nan") if r is None else r for r in ar["recall"][n]]
            value = ar[f"AR@{n}"]
            label = variant if value is None else f"{variant} (AR {100 * value:.1f})"
            ax.plot(ar["iou_thresholds"], recall, marker="o", ms=3, label=label)
        ax.set(xlim=(0.5, 0.95), ylim=(0, 1), xlabel="IoU", ylabel="recall", title=f"N = {n}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)
    return save_png(fig, path)


def plot_loss(log: pd.DataFrame, path: str | Path) -> Path:
    """The loss terms of the training log against the iteration, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    for column in (c for c in log.columns if c.startswith("loss")):
        ax.plot(log["iteration"], log[column], label=column, lw=1.5 if column == "loss" else 1)
    ax.set(xlabel="iteration", ylabel="loss", title="Training loss (eq. 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _plot_server(connection: Connection, parents: Connection) -> None:
    """Import matplotlib, then run each (plot, args) received; answer None or the error."""
    worker_process()
    parents.close()  # the parent's end, inherited by a fork: EOF only once it is closed there
    with held():  # a stop inside a C extension's import would be an ImportError's traceback
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401

    while True:
        try:
            plot, args = connection.recv()
        except EOFError:
            return
        try:
            plot(*args)
            connection.send(None)
        except Exception as exc:  # handed to the caller, which raises it
            connection.send(exc)


class Plotter:
    """A process that imports matplotlib while a command starts up and reads its inputs (which
    leave a core idle) and draws a plot of this module when asked: the import alone costs a
    quarter of a second, a tenth of what `ifcn evaluate` takes. A context manager; a plain
    process and a pipe, so that this process starts no thread before it forks its workers."""

    def __enter__(self) -> Plotter:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        self._connection, theirs = context.Pipe()
        self._process = context.Process(
            target=_plot_server, args=(theirs, self._connection), daemon=True
        )
        self._process.start()
        theirs.close()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._connection.close()
        if exc_type is None:
            self._process.join(timeout=5)
        if self._process.is_alive():  # still importing, or stuck: it holds nothing to keep
            self._process.terminate()
            self._process.join(timeout=STOP_GRACE + 2)
        if self._process.is_alive():  # never a wait without end on a helper
            self._process.kill()
            self._process.join()

    def draw(self, plot: Callable[..., Path], *args: Any) -> None:
        """`plot(*args)` in the plotting process (a plot of this module: the path last); its
        error, if any, raised here."""
        self._connection.send((plot, args))
        try:
            error = self._connection.recv()
        except EOFError:
            raise IfcnError("the plotting process died", args[-1]) from None
        if error is not None:
            raise error
