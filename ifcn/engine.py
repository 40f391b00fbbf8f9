"""The training step and its bookkeeping, apart from the CLI and the model (DETR's engine)."""

from __future__ import annotations

import contextlib
import csv
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from ifcn.atomic import atomic_path
from ifcn.distributed import all_reduce_mean

LOG_COLUMNS = [
    "iteration",
    "loss",
    "loss_objectness",
    "loss_mask",
    "lr",
    "num_pos",
    "num_neg",
    "data_seconds",
    "seconds",
]


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """Seed of everything random in one step of one rank: a pure function of the three."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0])


class IterationSampler(Sampler):
    """Keys (image index, step seed) for steps ``start..total`` of one rank.

    It plays the role of DistributedSampler with ``set_epoch`` in an epoch loop, for a training
    counted in iterations: step i of rank r takes position p = i·W + r of an endless sequence
    of epochs, each a permutation of the images seeded by (seed, epoch). Every epoch visits each
    image exactly once across the W ranks, without DistributedSampler's padding (only a step
    that straddles the end of an epoch may hand two ranks the same image), and a resumed run
    continues the very same sequence mid-epoch, where DistributedSampler would restart its
    epoch. The step seed draws the sample's scale and flip; it is a pure function of
    (seed, i, r), so neither the number of DataLoader workers nor a restart changes a sample.
    """

    def __init__(
        self, num_images: int, start: int, total: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.num_images = num_images
        self.start, self.total = start, total
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, order = -1, None
        for iteration in range(self.start, self.total):
            position = iteration * self.world_size + self.rank
            if position // self.num_images != epoch:
                epoch = position // self.num_images
                order = torch.randperm(
                    self.num_images, generator=torch.Generator().manual_seed(self.seed + epoch)
                )
            yield int(order[position % self.num_images]), step_seed(self.seed, iteration, self.rank)


def train_one_step(
    model: nn.Module,
    criterion: nn.Module,
    sample: dict,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    generator: torch.Generator,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Forward one image, compute the loss of eq. (1), step the optimiser.

    Raises FloatingPointError (on every rank, so that all stop together) when the loss of any
    rank is not finite, before any update.
    """
    image = sample["image"][None].to(device, non_blocking=True)
    target = {
        key: sample[key].to(device, non_blocking=True) for key in ("boxes", "masks", "iscrowd")
    }
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        outputs = model(image)
    outputs = {key: value.float() for key, value in outputs.items()}
    losses = criterion(outputs, target, generator)
    loss = losses["loss"]
    local_finite = torch.isfinite(loss).float().reshape(1)
    if all_reduce_mean(local_finite).item() < 1.0:
        if local_finite.item() < 1.0:
            raise FloatingPointError(f"loss is {loss.item()}")
        raise FloatingPointError("the loss of another process is not finite")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return {key: value.detach() for key, value in losses.items()}


def build_lr_lambda(train_cfg: dict):
    """Step schedule of the paper (with an optional linear warm-up)."""
    step_at = int(round(train_cfg["lr_step"] * train_cfg["iters"]))
    warmup = train_cfg["warmup_iters"]
    gamma = train_cfg["lr_gamma"]

    def factor(iteration: int) -> float:
        ramp = min(1.0, (iteration + 1) / warmup) if warmup else 1.0
        return ramp * (gamma if iteration >= step_at else 1.0)

    return factor


class TrainLog:
    """A training CSV log: one row per logging period with period means reduced over ranks.

    ``columns`` start with "iteration" and include "lr" (train_log.csv by default; the
    classifier logs its own columns).
    """

    def __init__(
        self,
        path: Path,
        start_iteration: int,
        enabled: bool = True,
        columns: Sequence[str] = LOG_COLUMNS,
    ):
        self.path = path
        self.enabled = enabled
        self.columns = list(columns)
        self.sums: dict[str, float] = {}
        self.count = 0
        if enabled:
            self._truncate_after(start_iteration)

    def _truncate_after(self, iteration: int) -> None:
        """Drop the rows a killed run logged after its checkpoint: the resumed run redoes them."""
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)

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
            row = {"iteration": iteration, "lr": f"{lr:.6g}"}
            row.update({k: f"{means.get(k, 0.0):.6g}" for k in self.columns[1:] if k != "lr"})
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)
        return means


class StopRequest:
    """Turns SIGTERM (SLURM preemption) into a flag checked after every step."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


def ignore_sigterm(_worker_id: int) -> None:
    """DataLoader workers outlive a SIGTERM sent to the whole job, so the last step finishes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
