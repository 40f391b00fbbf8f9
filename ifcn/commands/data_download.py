"""`ifcn data download`: fetch a dataset's official archives, verify them, unpack them.

Downloads resume (HTTP Range) into `<name>.part`, are verified against the checksum the dataset
publishes before they take their final name, and unpack through a temporary folder so a failure
leaves nothing half-extracted. A dataset whose unpacked files are present is not fetched again.
Offline, or on a checksum mismatch, the error says which file to place where by hand.
Nothing here runs at import time; tests pass their own table of archives. With `--config`
the archive sets are those the dataset registry names for `data.dataset` (voc2012: VOC 2012
and SBD) and the folder is `data.root`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.config import command_config, config_option
from ifcn.data import datasets, download
from ifcn.errors import IfcnError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download, verify and unpack a dataset's official archives (resumable).",
        add_help=add_help,
    )
    config_option(parser)
    parser.add_argument(
        "--dataset", choices=sorted(download.DATASETS),
        help="archive set to fetch (with --config: default every one data.dataset needs)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="folder, e.g. resources/<name> (with --config: data.root)"
    )
    parser.add_argument(
        "--mirror", help="base URL of a local mirror holding the archives, tried first"
    )
    parser.add_argument(
        "--remove-archives", action="store_true", help="delete each archive once unpacked"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.config is None and (args.dataset is None or args.out is None):
        raise IfcnError("give --dataset and --out, or --config")
    names, out = [args.dataset], args.out
    if args.config is not None:
        data = command_config(args)["data"]
        names = [args.dataset] if args.dataset else datasets.dataset(data["dataset"]).downloads
        out = out or Path(data["root"])
    if not names:
        print(f"dataset {data['dataset']} has no archives to download")
    for name in names:
        lines = download.download_dataset(
            name,
            out,
            mirror=args.mirror,
            keep_archives=not args.remove_archives,
            progress=not args.quiet,
        )
        print("\n".join(lines))
    return 0
