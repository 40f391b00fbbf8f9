"""`ifcn nms`: candidates.h5 → proposals.h5 (paper §3.3 "Inference", DESIGN §6).

Per image: each candidate's mask is resized to its window box in original-image pixels (clipped
to the image) and binarised (probability > threshold); the tight box of the binary mask is
taken, empty masks are dropped, NMS runs on those boxes ordered by objectness, the best N are
kept and encoded as COCO RLE at image resolution. The proposal score is sigmoid(objectness).
Thresholds and N (the config's `nms` section, or the flags) change here without rerunning the
network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.atomic import output_file
from ifcn.config import command_config, config_option, override_option
from ifcn.errors import IfcnError
from ifcn.proposals.suppression import run_nms


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn nms", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_option(parser)
    parser.add_argument("--candidates", required=True, help="candidates.h5 of `ifcn infer`")
    parser.add_argument("--out", required=True, help="proposals.h5 to write")
    override_option(parser, "--iou", "nms.iou", "box IoU above which NMS suppresses")
    override_option(parser, "--top-n", "nms.top_n", "proposals kept per image")
    override_option(
        parser, "--mask-threshold", "nms.mask_threshold", "probability a mask pixel must exceed"
    )
    parser.add_argument("--workers", type=int, default=0, help="processes (default 0: one per CPU)")
    return parser


def main(args: argparse.Namespace) -> int:
    config = command_config(args)
    if args.workers < 0:
        raise IfcnError(f"--workers must be 0 (one per CPU) or more, got {args.workers}")
    output_file(args.out)  # not a name ending in '/'
    if Path(args.out).is_dir():
        raise IfcnError("is a folder; give a file name to write", args.out)
    count = run_nms(args.candidates, args.out, config["nms"], args.workers)
    print(f"wrote proposals of {count} images: {args.out}")
    return 0
