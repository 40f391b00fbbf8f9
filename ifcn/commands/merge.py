"""`ifcn merge`: the candidates.h5 shards of one inference job into one file.

Shards are contiguous chunks of the sorted image ids, so they merge by concatenation; they must
come from the same inference run (every attribute but ``shard`` equal) and hold disjoint images.
"""

from __future__ import annotations

import argparse

from ifcn.atomic import output_file
from ifcn.config import command_config, config_option
from ifcn.proposals.merge import merge_candidates


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn merge",
        description="Merge the candidates.h5 shards of one inference job into one file.",
        add_help=add_help,
    )
    config_option(parser, reads=False)
    parser.add_argument("--inputs", nargs="+", required=True, help="candidates.h5 shards")
    parser.add_argument("--out", required=True, help="merged candidates.h5")
    parser.add_argument(
        "--allow-partial", action="store_true", help="merge even if some shards are missing"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    command_config(args)
    count = merge_candidates(args.inputs, output_file(args.out), args.allow_partial)
    print(f"merged {len(args.inputs)} shards, {count} images: {args.out}")
    return 0
