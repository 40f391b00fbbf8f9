"""The paper's ablations (Tables 1 and 2) as runs of the workflow.

Each variant is the run's own config with a few keys overridden (``config``), trained and
evaluated by the same ``ifcn`` stages under results/<run>/ablation/<variant>/; ``table`` then
gathers the variants' ar.json files into one CSV (AR as fractions, one row per variant) and a
recall-vs-IoU plot. The variants are named once, in `ifcn.variants`.

The command `ifcn ablation` is `ifcn.commands.ablation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ifcn import atomic
from ifcn.errors import IfcnError
from ifcn.reporting.summaries import read_ar


def ablation_table(ar_files: Sequence[str | Path], variants: Sequence[str]) -> pd.DataFrame:
    """One row per variant: its name and AR@N (fractions) read from its ar.json."""
    if len(ar_files) != len(variants):
        raise IfcnError(f"{len(variants)} variants named for {len(ar_files)} ar.json files")
    rows, columns = [], None
    for path, variant in zip(ar_files, variants, strict=True):
        ar = read_ar(path)
        keys = [key for key in ar if key.startswith("AR@")]
        if columns is None:
            columns = keys
        elif keys != columns:
            raise IfcnError(f"has {', '.join(keys)}, the first file {', '.join(columns)}", path)
        rows.append({"variant": variant, **{key: ar[key] for key in keys}})
    return pd.DataFrame(rows, columns=["variant", *(columns or [])])


def plot_ablation(ar_files: Sequence[str | Path], variants: Sequence[str], path: Path) -> None:
    """Recall against IoU of every variant, one panel per N (the paper's Fig. 6 layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ars = [read_ar(p) for p in ar_files]
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
    FigureCanvasAgg(fig)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
