"""What each training step reads: the image of step i of rank r and the seed of its randomness.

A training is counted in iterations, not epochs, and must resume exactly; so the sampler hands
out keys (image index, step seed) that are pure functions of (seed, i, r), and the DataLoader
only fetches them (torchvision references' DistributedSampler + `set_epoch`, made resumable).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


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


def ignore_sigterm(_worker_id: int) -> None:
    """DataLoader workers outlive a SIGTERM sent to the whole job, so the last step finishes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(
    dataset: Dataset, sampler: IterationSampler, workers: int, device: torch.device
) -> DataLoader:
    """One sample per step (``batch_size=None``: the dataset returns a whole training sample)."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_sigterm,
        persistent_workers=False,
    )
