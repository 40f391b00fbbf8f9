"""`ifcn data download`: fetch a dataset's official archives, verify them, unpack them.

Downloads resume (HTTP Range) into `<name>.part`, are verified against the checksum the dataset
publishes before they take their final name, and unpack through a temporary folder so a failure
leaves nothing half-extracted. A dataset whose unpacked files are present is not fetched again.
Offline, or on a checksum mismatch, the error says which file to place where by hand.
Nothing here runs at import time; tests pass their own table of archives.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.data import download


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download, verify and unpack a dataset's official archives (resumable).",
        add_help=add_help,
    )
    parser.add_argument(
        "--dataset", required=True, choices=sorted(download.DATASETS), help="dataset"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder, e.g. resources/<name>")
    parser.add_argument(
        "--mirror", help="base URL of a local mirror holding the archives, tried first"
    )
    parser.add_argument(
        "--remove-archives", action="store_true", help="delete each archive once unpacked"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    lines = download.download_dataset(
        args.dataset,
        args.out,
        mirror=args.mirror,
        keep_archives=not args.remove_archives,
        progress=not args.quiet,
    )
    print("\n".join(lines))
    return 0
