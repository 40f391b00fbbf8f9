"""`ifcn data synth`: the seeded synthetic dataset of DESIGN §3, written as COCO instances JSON.

Shapes of a few categories on textured backgrounds; about half the objects are placed as a
touching or overlapping neighbour of an earlier object with the *same colour and category*, the
case a semantic FCN cannot split into instances and InstanceFCN can. Objects are painted in order
(later on top); an object left mostly hidden is removed before painting, so every visible shape is
annotated and every annotation is what is visible. Each image is a pure function of
(seed, split, index), so the output is byte-identical for any number of workers. The
parameters are the config's `data.synth` section; the flags override them.
"""

from __future__ import annotations

import argparse

from ifcn.config import command_config, config_option, override_option
from ifcn.data.synth import generate_dataset


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate the synthetic shapes dataset as COCO instances JSON + PNG images.",
        add_help=add_help,
    )
    config_option(parser)
    parser.add_argument(
        "--out", required=True, help="output folder (train.json, val.json, images/)"
    )
    for flag, key, help in (
        ("--seed", "seed", "seed"),
        ("--num-train", "num_train", "training images"),
        ("--num-val", "num_val", "validation images"),
        ("--min-side", "min_side", "smallest image side"),
        ("--max-side", "max_side", "largest image side"),
        ("--min-objects", "min_objects", "fewest objects per image"),
        ("--max-objects", "max_objects", "most objects per image"),
    ):
        override_option(parser, flag, f"data.synth.{key}", help)
    parser.add_argument("--workers", type=int, default=1, help="processes; output is identical")
    return parser


def main(args: argparse.Namespace) -> int:
    config = command_config(args)
    paths = generate_dataset(args.out, config["data"]["synth"], workers=args.workers)
    print(f"wrote {paths['train']}, {paths['val']} and images under {paths['images']}")
    return 0
