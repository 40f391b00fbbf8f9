"""`ifcn train`: image-centric training of InstanceFCN (paper §3.3, DESIGN §5).

One image per process per step, SGD with momentum 0.9 and weight decay 5e-4, lr multiplied by
``lr_gamma`` after ``lr_step`` of the iterations. The same command runs as one process or under
``torchrun`` / ``srun`` (ifcn.training.distributed, docs/slurm.md): each rank takes its own image
and DDP averages the gradients, so the effective batch is the world size W and ``train.iters``
counts optimiser steps of W images (config/README.md says how to scale iters and lr with W).
Checkpoints are written by rank 0 alone, atomically, every ``checkpoint_period`` steps and at
the end; ``--resume`` continues exactly: data order, augmentation and window sampling of step i
depend only on (seed, i, rank). SIGTERM (SLURM preemption, torchrun shutting down) makes every
rank finish its step, rank 0 write a checkpoint, and all exit with an error that says so.
"""

from __future__ import annotations

import argparse

from ifcn.config import command_config, config_option, override_option
from ifcn.training import distributed
from ifcn.training.instancefcn import AMP_DTYPES, run_training


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn train", description=__doc__, add_help=add_help)
    config_option(parser, required=True)
    parser.add_argument("--out", required=True, help="output folder of the run")
    override_option(parser, "--iters", "train.iters", "optimiser steps")
    parser.add_argument(
        "--resume",
        help="checkpoint to continue from, or 'auto' for the newest complete one of --out "
        "(none: start from scratch)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when there is a GPU; an error on a job given GPUs that CUDA cannot "
        "use) | cpu | cuda",
    )
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), help="mixed precision on CUDA")
    override_option(parser, "--workers", "train.workers", "DataLoader processes per process")
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train as N ranks of this node, forked from this process after its imports (as "
        "torchrun --standalone --nproc-per-node N does, sharing the imports' memory): one per GPU",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its algorithms per input shape: faster when image sizes repeat "
        "(a fixed-size dataset), slower when most images bring a new size (COCO at several "
        "scales), so off by default",
    )
    return parser


def validate(args: argparse.Namespace) -> None:
    """What `--nproc-per-node` checks once before it forks the ranks: a bad config is then one
    line, not one a rank."""
    command_config(args)


def main(args: argparse.Namespace) -> int:
    config = command_config(args)
    try:
        final = run_training(
            config, args.out, args.resume, args.device, args.amp,
            cudnn_benchmark=args.cudnn_benchmark,
        )  # fmt: skip
    finally:
        distributed.cleanup()
    if distributed.dist_info_from_env().is_main:
        print(f"trained {config['train']['iters']} iterations: {final}")
    return 0
