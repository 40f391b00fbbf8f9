"""`ifcn classify evaluate`: mAP@0.5 and mAP@0.7 of instance segmentation (paper Table 4).

At the mask-level IoU thresholds 0.5 and 0.7 of SDS, Hypercolumn, CFM and MNC that the paper
compares with, under one of two protocols (config classify.ap, `--ap`): `voc`, SDS's region AP
(AP^r: VOC's area under the precision-recall curve, what the paper's VOC figures are), or
`coco`, pycocotools' COCOeval. mAP is the mean AP over the categories that have GT objects.
The output names the protocol. The results are checked first: an image or category the GT
does not know is an error, not a silent drop as in COCOeval. `data.first_n` limits the
evaluation images (`data.val_json`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ifcn
from ifcn.classify.evaluation import evaluate_segm, format_table
from ifcn.config import command_config, config_option, evaluation_first_n, override_option
from ifcn.data.jsonio import write_json_atomic


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn classify evaluate", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_option(parser)
    parser.add_argument("--gt", required=True, type=Path, help="COCO instances JSON")
    parser.add_argument(
        "--results", required=True, type=Path, help="COCO segm results JSON (classify predict)"
    )
    parser.add_argument(
        "--max-dets", type=int, default=100, help="results per image counted (default 100)"
    )
    override_option(
        parser, "--first-n", "data.first_n", "only the first K image ids in sorted order "
        "(from the config: of data.val_json only)", metavar="K",
    )  # fmt: skip
    override_option(
        parser, "--ap", "classify.ap",
        "voc: SDS region AP (AP^r, VOC all-points area under the PR curve); voc11: the same "
        "matching, VOC 2007 11-point AP as MNC's evaluation; coco: pycocotools COCOeval",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="segm_eval.json to write")
    return parser


def main(args: argparse.Namespace) -> int:
    config = command_config(args)
    first_n = evaluation_first_n(config, args.gt, given=args.first_n is not None)
    summary = evaluate_segm(args.gt, args.results, config["classify"]["ap"], args.max_dets, first_n)
    summary.update(gt=str(args.gt), results=str(args.results), ifcn_version=ifcn.__version__)
    write_json_atomic(summary, args.out)
    print(format_table(summary))
    return 0
