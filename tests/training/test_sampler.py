"""What each step reads depends on (seed, step, rank) alone: not on workers, not on a restart.

(The sampler across several ranks is tested with the launches in test_distributed.py.)
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ifcn.training.sampler import IterationSampler, build_loader, step_seed


class Keys(Dataset):
    """Returns the key it is asked for, as a sample would be drawn from it."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        return {"index": index, "seed": seed}


def test_each_epoch_is_a_permutation_and_a_restart_continues_mid_epoch():
    keys = list(IterationSampler(5, 0, 12, seed=4))
    indices = [index for index, _ in keys]
    assert sorted(indices[:5]) == sorted(indices[5:10]) == list(range(5))
    assert indices[:5] != indices[5:10]
    assert list(IterationSampler(5, 7, 12, seed=4)) == keys[7:]
    assert [seed for _, seed in keys] == [step_seed(4, i, 0) for i in range(12)]
    assert len({seed for _, seed in keys}) == 12


def test_loader_workers_do_not_change_the_samples():
    seen = []
    for workers in (0, 1):
        loader = build_loader(
            Keys(), IterationSampler(5, 2, 9, seed=1), workers, torch.device("cpu")
        )
        seen.append([(s["index"], s["seed"]) for s in loader])
    assert seen[0] == seen[1] == list(IterationSampler(5, 2, 9, seed=1))
