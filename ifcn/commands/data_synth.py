"""`ifcn data synth`: the seeded synthetic dataset of DESIGN §3, written as COCO instances JSON.

Shapes of a few categories on textured backgrounds; about half the objects are placed as a
touching or overlapping neighbour of an earlier object with the *same colour and category*, the
case a semantic FCN cannot split into instances and InstanceFCN can. Objects are painted in order
(later on top); an object left mostly hidden is removed before painting, so every visible shape is
annotated and every annotation is what is visible. Each image is a pure function of
(seed, split, index), so the output is byte-identical for any number of workers.
"""

from __future__ import annotations

import argparse

from ifcn.data.synth import generate_dataset


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate the synthetic shapes dataset as COCO instances JSON + PNG images.",
        add_help=add_help,
    )
    parser.add_argument(
        "--out", required=True, help="output folder (train.json, val.json, images/)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--min-side", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=384)
    parser.add_argument("--min-objects", type=int, default=2)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1, help="processes; output is identical")
    return parser


def main(args: argparse.Namespace) -> int:
    paths = generate_dataset(
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        min_side=args.min_side,
        max_side=args.max_side,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        workers=args.workers,
    )
    print(f"wrote {paths['train']}, {paths['val']} and images under {paths['images']}")
    return 0
