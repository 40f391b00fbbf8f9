"""`ifcn classify train`: the second step of the paper's two-step training (Table 4, DESIGN §9).

The classifier learns on given proposals (proposals.h5 of the training images) and the GT
masks. Its backbone is either built from the config's `model` section or, with `--init-from`,
copied from the proposal model's checkpoint. One image per process per step, 64 RoIs at 1:3,
softmax cross-entropy; SGD with momentum and a step schedule as `ifcn train`. Checkpoints are
atomic; `--resume` continues exactly: image, scale, flip and RoI sampling of step i depend only
on (classify.seed, i, rank).
"""

from __future__ import annotations

import argparse

from ifcn.classify.training import run_training
from ifcn.config import command_config, config_option, override_option
from ifcn.training import distributed


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn classify train", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_option(parser, required=True)
    parser.add_argument("--proposals", required=True, help="proposals.h5 of the training images")
    parser.add_argument("--gt", required=True, help="COCO instances JSON of the training images")
    parser.add_argument("--images", help="folder of the images (default: data.train_images)")
    parser.add_argument(
        "--init-from", help="model_final.pt of `ifcn train`: start from its backbone weights"
    )
    parser.add_argument("--out", required=True, help="output folder of the classifier run")
    override_option(parser, "--iters", "classify.iters", "optimiser steps")
    parser.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when there is a GPU; an error on a job given GPUs that CUDA cannot "
        "use) | cpu | cuda",
    )
    override_option(parser, "--workers", "classify.workers", "DataLoader processes per process")
    return parser


def main(args: argparse.Namespace) -> int:
    config = command_config(args)
    try:
        final = run_training(
            config,
            args.proposals,
            args.gt,
            args.out,
            image_root=args.images,
            init_from=args.init_from,
            resume=args.resume,
            device_name=args.device,
        )
    finally:
        distributed.cleanup()
    if distributed.dist_info_from_env().is_main:
        print(f"trained the classifier for {config['classify']['iters']} iterations: {final}")
    return 0
