"""The paper's ablations (Tables 1 and 2) as runs of the workflow.

Each variant is the run's own config with a few keys overridden (``config``), trained and
evaluated by the same ``ifcn`` stages under results/<run>/ablation/<variant>/; ``table`` then
gathers the variants' ar.json files into one CSV (AR as fractions, one row per variant) and a
recall-vs-IoU plot (`ifcn.reporting.plots.plot_ablation`). The variants are named once, in
`ifcn.variants`.

The command `ifcn ablation` is `ifcn.commands.ablation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

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
