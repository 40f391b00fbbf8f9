"""`ifcn data check`: validate a COCO instances JSON against its images before anything uses it.

Everything `validate_instances` refuses is a problem here too (all of them are listed, not just
the first); besides, every image must be readable and of its recorded size, and every mask
inside its image and non-empty. Any problem fails the check; a stored `area` or `bbox` that
disagrees with the mask, and the quirks the validator tolerates, are only warnings (the
converters repair them). The summary counts images, instances and their COCO size classes per
category. `--disjoint-from` also fails when the JSON shares an image with a training JSON.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ifcn.atomic import atomic_path
from ifcn.data.check import check_dataset, forget, format_report, record
from ifcn.data.overlap import require_disjoint
from ifcn.errors import IfcnError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Validate a COCO instances JSON and its images; print a summary table.",
        add_help=add_help,
    )
    parser.add_argument("--json", type=Path, required=True, help="COCO instances JSON")
    parser.add_argument(
        "--images", type=Path, help="image root (default: the JSON's info.image_root)"
    )
    parser.add_argument("--out", type=Path, help="write the summary table here (CSV) if it passes")
    parser.add_argument(
        "--disjoint-from",
        type=Path,
        metavar="TRAIN_JSON",
        help="also fail if the JSON shares an image with this (training) COCO JSON",
    )
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes over images"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    report = check_dataset(args.json, args.images, workers=args.workers)
    print(format_report(report))
    if not report.ok:
        forget(args.json)
        raise IfcnError(
            f"check failed with {len(report.problems)} problems; first: {report.problems[0]}",
            args.json,
        )
    if args.disjoint_from is not None:
        require_disjoint(args.disjoint_from, args.json, val_images=args.images)
        print(f"no image shared with {args.disjoint_from}")
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            report.summary.to_csv(tmp)
    recorded = record(report)
    if isinstance(recorded, str):
        print(f"note: the check is not recorded ({recorded}); stages will validate it again")
    else:
        print(f"recorded the check in {recorded.path}")
    print(f"check passed: {args.json}")
    return 0
