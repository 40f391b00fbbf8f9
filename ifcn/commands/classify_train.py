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
from ifcn.config import load_config
from ifcn.training import distributed


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn classify train", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--proposals", required=True, help="proposals.h5 of the training images")
    parser.add_argument("--gt", required=True, help="COCO instances JSON of the training images")
    parser.add_argument("--images", help="folder of the images (default: data.train_images)")
    parser.add_argument(
        "--init-from", help="model_final.pt of `ifcn train`: start from its backbone weights"
    )
    parser.add_argument("--out", required=True, help="output folder of the classifier run")
    parser.add_argument("--iters", type=int, help="override classify.iters")
    parser.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when there is a GPU; an error on a job given GPUs that CUDA cannot "
        "use) | cpu | cuda",
    )
    parser.add_argument("--workers", type=int, help="override classify.workers")
    return parser


def main(args: argparse.Namespace) -> int:
    overrides = {"classify": {"iters": args.iters}} if args.iters is not None else None
    config = load_config(args.config, overrides)
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
            workers=args.workers,
        )
    finally:
        distributed.cleanup()
    if distributed.dist_info_from_env().is_main:
        print(f"trained the classifier for {config['classify']['iters']} iterations: {final}")
    return 0
