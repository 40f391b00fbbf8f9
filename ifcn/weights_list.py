"""`ifcn weights list`: where `model.pretrained: true` finds each backbone's ImageNet weights.

Nothing is downloaded: each backbone's file is looked up as a run would look it up (the hub
cache for torchvision's, the installed package for EfficientNet-Lite0's) and the missing ones
say how to get them.
"""

from __future__ import annotations

import argparse

from ifcn.model.backbone import BACKBONES, pretrained_weights_status


def weights_table() -> list[tuple[str, str, str]]:
    """(backbone, file or '-', note) for every backbone, in the order of BACKBONES."""
    rows = []
    for name in BACKBONES:
        path, note = pretrained_weights_status(name)
        rows.append((name, str(path) if path is not None else "-", note))
    return rows


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return argparse.ArgumentParser("ifcn weights list", description=__doc__, add_help=add_help)


def main(args: argparse.Namespace) -> int:
    rows = weights_table()
    width = max(len(name) for name, _, _ in rows)
    for name, path, note in rows:
        print(f"{name.ljust(width)}  {path}  ({note})")
    return 0
