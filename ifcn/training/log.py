"""The training log: train_log.csv (classify_log.csv) and, on request, TensorBoard scalars.

One row per logging period holds the period's means reduced over ranks; rank 0 alone writes.
The rows written so far travel in every checkpoint (`state_dict`), so a resumed run rewrites
the log from its checkpoint: the rows up to it are kept even when the file is gone (Snakemake
deletes the outputs of a job that failed), and rows a killed run logged after its checkpoint
are dropped, since the resumed run logs those steps again. So does each rank's sum of the
period in progress, so that the row of a period a stop split (SIGTERM at step 5 of a 2-step
period) is the mean of all its steps, as in an uninterrupted run.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor

from ifcn.atomic import atomic_path
from ifcn.errors import IfcnError
from ifcn.training.distributed import all_gather_object, all_reduce_mean


@dataclass(frozen=True)
class LogFormat:
    """What a trainer logs: the file name, its columns (from "iteration", with "lr"), and the
    progress bar's name and labels (label -> column)."""

    name: str
    columns: Sequence[str]
    desc: str
    postfix: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"loss": "loss"}))


class TrainLog:
    """A training CSV log (and TensorBoard scalars tagged by column, at the row's iteration)."""

    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        enabled: bool = True,
        tensorboard: Path | None = None,
    ):
        self.path = path
        self.columns = list(columns)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.writer = None
        self.sums: dict[str, float] = {}
        self.count = 0
        self.rows: list[list[str]] = []
        self.restored = False

    def state_dict(self) -> dict:
        """The rows written so far (strings, as in the file) and every rank's sums of the period
        in progress, for a checkpoint. A collective: every rank calls it."""
        return {
            "columns": list(self.columns),
            "rows": [list(row) for row in self.rows],
            "periods": all_gather_object([self.sums, self.count]),
        }

    def load_state_dict(self, state: dict, rank: int = 0, world_size: int = 1) -> None:
        """The rows of a checkpoint, written again by `start` (columns matched by name), and
        this rank's sums of the period in progress if the checkpoint's ranks were as many."""
        names = state["columns"]
        self.rows = [
            [dict(zip(names, row, strict=True)).get(column, "") for column in self.columns]
            for row in state["rows"]
        ]
        self.restored = True
        periods = state.get("periods")  # absent from checkpoints of older ifcn
        if periods is not None and len(periods) == world_size:
            sums, self.count = periods[rank]
            self.sums = dict(sums)

    def start(self, iteration: int) -> None:
        """Write the header and the rows up to ``iteration``: those of the checkpoint the run
        resumes from, or, for a checkpoint without rows (older ifcn), those of the file."""
        if not self.enabled:
            return
        try:
            if not self.restored and iteration > 0 and self.path.exists():
                with open(self.path, newline="") as f:
                    found = csv.DictReader(f)
                    self.rows = [[row.get(c) or "" for c in self.columns] for row in found]
            self.rows = [row for row in self.rows if int(row[0]) <= iteration]
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.columns)
                writer.writerows(self.rows)
        except OSError as exc:
            raise IfcnError(f"cannot write the log: {exc.strerror or exc}", self.path) from None
        except (ValueError, csv.Error):
            raise IfcnError(
                "not a training log: a row without an iteration number", self.path
            ) from None
        if self.tensorboard is not None:
            # imported here: TensorBoard is optional and slow to import
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of this step and after, of a killed run, are dropped as above
            self.writer = SummaryWriter(str(self.tensorboard), purge_step=iteration + 1)

    def update(self, values: dict[str, float | Tensor]) -> None:
        """Add one step's values; tensors are fetched together (one device sync per step)."""
        keys = list(values)
        tensors = [k for k in keys if isinstance(values[k], Tensor)]
        stacked = torch.stack([values[k].float() for k in tensors]).tolist() if tensors else []
        fetched = dict(zip(tensors, stacked, strict=True))
        for key in keys:
            value = fetched[key] if key in fetched else values[key]
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def write(self, iteration: int, lr: float, device: torch.device) -> dict[str, float]:
        """Reduce the period's means over ranks and append them (rank 0); returns them."""
        keys = sorted(self.sums)
        local = torch.tensor([self.sums[k] / max(self.count, 1) for k in keys], device=device)
        means = dict(zip(keys, all_reduce_mean(local).tolist(), strict=True))
        self.sums, self.count = {}, 0
        if self.enabled:
            values = {k: lr if k == "lr" else means.get(k, 0.0) for k in self.columns[1:]}
            row = [str(iteration)] + [f"{v:.6g}" for v in values.values()]
            try:
                with open(self.path, "a", newline="") as f:
                    csv.writer(f).writerow(row)
            except OSError as exc:
                raise IfcnError(f"cannot write the log: {exc.strerror or exc}", self.path) from None
            self.rows.append(row)
            if self.writer is not None:
                for key, value in values.items():
                    self.writer.add_scalar(key, value, iteration)
        return means

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
