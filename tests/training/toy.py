"""A toy regression trained by `engine.fit`: the loop's cases without a network or images."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ifcn.training import engine
from ifcn.training.distributed import DistInfo
from ifcn.training.hooks import lr_scheduler
from ifcn.training.log import LogFormat
from ifcn.training.run_folder import Resume, Run

COLUMNS = ("iteration", "loss", "lr", "seconds")
LOG = LogFormat("train_log.csv", COLUMNS, "train")
SETTINGS = {
    "iters": 6,
    "seed": 3,
    "log_period": 1,
    "checkpoint_period": 3,
    "keep_checkpoints": 2,
    "workers": 0,
    "lr": 0.05,
    "lr_step": 0.5,
    "lr_gamma": 0.1,
    "warmup_iters": 0,
}


class Points(Dataset):
    """Eight (x, y) pairs of a noisy line; the step seed adds its own noise, as a flip would."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        noise = torch.randn(1, generator=torch.Generator().manual_seed(seed)) * 0.01
        return {"x": self.x[index], "y": self.y[index] + noise}


def squared_error(model: nn.Module, sample: dict, iteration: int) -> dict[str, torch.Tensor]:
    return {"loss": (model(sample["x"][None])[0, 0] - sample["y"][0]) ** 2}


def fit(out: Path, resume: Path | None = None, loss_fn=squared_error, settings=SETTINGS, **kw):
    """`engine.fit` of the toy into ``out`` (resuming the checkpoint ``resume``)."""
    torch.manual_seed(settings["seed"])
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9)
    state = None if resume is None else Resume(resume, torch.load(resume, weights_only=True))
    run = Run(out, DistInfo(), torch.device("cpu"), state, kw.pop("show_progress", False))
    return engine.fit(
        model, loss_fn, optimizer, lr_scheduler(optimizer, settings), Points(), settings, run,
        log=kw.pop("log", LOG), extras={"kind": "toy", "config": {"model": {}}}, **kw,
    )  # fmt: skip
