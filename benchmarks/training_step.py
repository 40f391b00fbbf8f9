"""Seconds per training step of several models on one run's data, interleaved in one process.

On a shared machine the wall time of a whole training says more about the other jobs than
about the model, and with two intra-op threads even the CPU time swells (a thread spins at each
barrier while its partner waits to be scheduled). This measures what a quiet machine would
show: each step's sample (the same image and scale for every model) goes through each model in
turn — forward, the loss of eq. (1) on 256 sampled windows, backward, SGD step, as `ifcn train`
does — on ``--threads`` threads (1 by default: immune to the spinning), so load from elsewhere
hits every model alike. Reported per model: the median step time (wall and process CPU) after
``--warmup`` steps, and its ratio to the first model's. A quiet machine's training time of one
model then follows from another's measured one by the ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from ifcn.config import load_config
from ifcn.criterion import build_criterion
from ifcn.data.crops import build_train_dataset
from ifcn.model import build_model, parameter_groups

# name -> model section overrides (laid over the config's model section)
MODELS = {
    "tiny": {"backbone": "tiny", "pretrained": False},
    "lite0_imagenet": {"backbone": "efficientnet_lite0", "pretrained": True},
    "lite0_random": {"backbone": "efficientnet_lite0", "pretrained": False},
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="a run's config (its data and train)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench/training_step.json")
    return parser


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    train = base["train"]
    dataset = build_train_dataset(base)
    runs = {}
    for name in args.models:
        config = copy.deepcopy(base)
        config["model"].update(MODELS[name])
        torch.manual_seed(0)
        model = build_model(config["model"]).train()
        mult = train["backbone_lr_mult"] if config["model"]["pretrained"] else 1.0
        optimizer = torch.optim.SGD(
            parameter_groups(model, train["lr"], mult),
            lr=train["lr"],
            momentum=train["momentum"],
            weight_decay=train["weight_decay"],
        )
        runs[name] = (model, build_criterion(config, model), optimizer, [], [])
    for step in range(args.warmup + args.steps):
        sample = dataset[(step % len(dataset), step)]
        image = sample["image"][None]
        target = {key: sample[key] for key in ("boxes", "masks", "iscrowd")}
        for model, criterion, optimizer, wall, cpu in runs.values():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            losses = criterion(model(image), target, torch.Generator().manual_seed(step))
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            if step >= args.warmup:
                wall.append(time.perf_counter() - start_wall)
                cpu.append(time.process_time() - start_cpu)
    first = args.models[0]
    result = {
        "config": args.config,
        "threads": args.threads,
        "steps": args.steps,
        "scales": train["scales"],
        "models": {
            name: {
                "step_s": statistics.median(wall),
                "step_cpu_s": statistics.median(cpu),
                "trainable_parameters": sum(
                    p.numel() for p in model.parameters() if p.requires_grad
                ),
            }
            for name, (model, _, _, wall, cpu) in runs.items()
        },
    }
    for name in runs:
        entry = result["models"][name]
        entry["cpu_ratio_to_" + first] = entry["step_cpu_s"] / result["models"][first]["step_cpu_s"]
        print(
            f"{name:16s} step {entry['step_s']:.3f} s wall, {entry['step_cpu_s']:.3f} s CPU "
            f"({entry['cpu_ratio_to_' + first]:.2f}x {first}), "
            f"{entry['trainable_parameters'] / 1e6:.2f}M trainable"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
