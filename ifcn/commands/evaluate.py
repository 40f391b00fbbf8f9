"""`ifcn evaluate`: mask Average Recall of proposals (paper §4, DESIGN §8).

Reads a COCO instances JSON and proposals (proposals.h5, or a COCO results JSON so that other
systems' proposals are scored by the same code) and writes ar.json and, named after it,
ar.recall_iou.csv and ar.recall_iou.png, all or none. AR@N equals pycocotools' COCOeval
(iouType='segm', useCats=0). The settings are the config's `evaluate` section; `data.first_n`
limits the evaluation images (`data.val_json`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ifcn.atomic import output_file
from ifcn.config import command_config, config_option, evaluation_first_n, override_option
from ifcn.cpus import available_cpus
from ifcn.evaluation.recall import AREA_CHOICES
from ifcn.reporting.plots import Plotter


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Mask Average Recall of proposals against COCO ground truth.",
        add_help=add_help,
    )
    config_option(parser)
    parser.add_argument("--gt", required=True, type=Path, help="COCO instances JSON")
    parser.add_argument(
        "--proposals", required=True, type=Path, help="proposals.h5 or a COCO results JSON"
    )
    override_option(
        parser, "--max-dets", "evaluate.max_dets", "numbers of top proposals per image to score",
        metavar="N",
    )  # fmt: skip
    override_option(
        parser, "--matching", "evaluate.matching",
        "coco: COCOeval's greedy one-to-one matching; best: each GT's best IoU in the top N",
    )  # fmt: skip
    override_option(
        parser, "--first-n", "data.first_n", "only the first K image ids in sorted order "
        "(from the config: of data.val_json only)", metavar="K",
    )  # fmt: skip
    parser.add_argument(
        "--area-ranges", choices=list(AREA_CHOICES), default="coco",
        help="coco: all/small/medium/large by GT area (COCO limits); all: overall only",
    )  # fmt: skip
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip proposals of images the GT lacks, and accept GT images the .h5 lacks",
    )
    parser.add_argument(
        "--workers", type=int, default=available_cpus(), metavar="N",
        help="processes computing mask IoUs (default: the CPUs available)",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True,
        help="ar.json to write; the recall curve goes beside it (ar.recall_iou.csv, .png)",
    )  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> int:
    config = command_config(args)
    settings = config["evaluate"]
    first_n = evaluation_first_n(config, args.gt, given=args.first_n is not None)
    out = output_file(args.out)
    with Plotter() as plotter:
        # imported once the plotting process runs: it imports matplotlib meanwhile, on the core
        # that this process's imports leave idle
        from ifcn.evaluation.ar import evaluate, format_table, write_outputs

        result = evaluate(
            args.gt,
            args.proposals,
            settings,
            first_n=first_n,
            area_ranges=args.area_ranges,
            allow_missing=args.allow_missing,
            workers=args.workers,
        )
        for note in result.notes:
            print(note, file=sys.stderr)
        record = {
            "options": {
                "max_dets": result.max_dets,
                "matching": settings["matching"],
                "first_n": first_n,
                "area_ranges": args.area_ranges,
                "allow_missing": args.allow_missing,
            },
            "inputs": result.inputs,
        }
        write_outputs(result, out, record, plotter)
    print(format_table(result))
    return 0
