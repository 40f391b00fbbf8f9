"""`ifcn export`: proposals.h5 to a COCO results JSON, for tools that read only that (DESIGN §7).

Each proposal becomes `{"image_id", "category_id", "segmentation": {"size", "counts"}, "score"}`
with the RLE counts as str. There is no `bbox` key on purpose: with one, `COCO.loadRes` would
take the box path and overwrite each result's area with the box's. The JSON is streamed image by
image into a temporary file that is renamed when complete.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.atomic import output_file
from ifcn.config import command_config, config_option
from ifcn.proposals.export import export_results


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert proposals.h5 to a COCO results JSON (RLE segmentations, no bbox).",
        add_help=add_help,
    )
    config_option(parser, reads=False)
    parser.add_argument("--proposals", required=True, type=Path, help="proposals.h5")
    parser.add_argument("--out", required=True, help="results JSON to write")
    parser.add_argument(
        "--category-id", type=int, default=1, help="category_id of every result (default 1)"
    )
    parser.add_argument("--top-n", type=int, metavar="N", help="keep the best N per image")
    return parser


def main(args: argparse.Namespace) -> int:
    command_config(args)
    count = export_results(args.proposals, output_file(args.out), args.category_id, args.top_n)
    print(f"wrote {count} results to {args.out}")
    return 0
