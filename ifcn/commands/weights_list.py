"""`ifcn weights list`: where `model.pretrained: true` finds each backbone's ImageNet weights.

Nothing is downloaded: each backbone's file is looked up as a run would look it up (the hub
cache for torchvision's, the installed package for EfficientNet-Lite0's) and the missing ones
say how to get them.
"""

from __future__ import annotations

import argparse

from ifcn.config import command_config, config_option
from ifcn.model.weights import weights_table


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn weights list", description=__doc__, add_help=add_help)
    config_option(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    if args.config is not None:
        command_config(args)  # checked like every command's; the list is the same for any run
    rows = weights_table()
    width = max(len(name) for name, _, _ in rows)
    for name, path, note in rows:
        print(f"{name.ljust(width)}  {path}  ({note})")
    return 0
