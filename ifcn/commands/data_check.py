"""`ifcn data check`: validate a COCO instances JSON against its images before anything uses it.

Everything `validate_instances` refuses is a problem here too (all of them are listed, not just
the first); besides, every image must be readable and of its recorded size, and every mask
inside its image and non-empty. Any problem fails the check; a stored `area` or `bbox` that
disagrees with the mask, and the quirks the validator tolerates, are only warnings (the
converters repair them). The summary counts images, instances and their COCO size classes per
category. `--disjoint-from` also fails when the JSON shares an image with a training JSON.
With `--config`, `--split train|val` checks the config's JSON of that split with its images,
the evaluation split against the training JSON unless `data.allow_shared_images`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.atomic import atomic_path
from ifcn.config import command_config, config_option
from ifcn.cpus import available_cpus
from ifcn.data.check import check_dataset, forget, format_report, record
from ifcn.data.datasets import SPLITS
from ifcn.data.overlap import require_disjoint
from ifcn.errors import IfcnError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Validate a COCO instances JSON and its images; print a summary table.",
        add_help=add_help,
    )
    config_option(parser)
    parser.add_argument("--json", type=Path, help="COCO instances JSON")
    parser.add_argument(
        "--split", choices=SPLITS, help="with --config: check data.<split>_json instead of --json"
    )
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
        "--workers", type=int, default=min(8, available_cpus()), help="processes over images"
    )
    return parser


def _inputs(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """The JSON, its image root and the JSON it must share no image with."""
    if (args.json is None) == (args.split is None) or (args.split and args.config is None):
        raise IfcnError("give --json, or --config and --split train|val")
    if args.json is not None:
        command_config(args)
        return args.json, args.images, args.disjoint_from
    data = command_config(args)["data"]
    train = None if data["allow_shared_images"] else Path(data["train_json"])
    disjoint = args.disjoint_from or (train if args.split == "val" else None)
    json_path = Path(data[f"{args.split}_json"])
    return json_path, args.images or Path(data[f"{args.split}_images"]), disjoint


def main(args: argparse.Namespace) -> int:
    json_path, images, disjoint_from = _inputs(args)
    report = check_dataset(json_path, images, workers=args.workers)
    print(format_report(report))
    if not report.ok:
        forget(json_path)
        raise IfcnError(
            f"check failed with {len(report.problems)} problems; first: {report.problems[0]}",
            json_path,
        )
    if disjoint_from is not None:
        require_disjoint(disjoint_from, json_path, val_images=images)
        print(f"no image shared with {disjoint_from}")
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            report.summary.to_csv(tmp)
    recorded = record(report)
    if isinstance(recorded, str):
        print(f"note: the check is not recorded ({recorded}); stages will validate it again")
    else:
        print(f"recorded the check in {recorded.path}")
    print(f"check passed: {json_path}")
    return 0
