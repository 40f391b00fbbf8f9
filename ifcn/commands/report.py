"""`ifcn report`: results/<run>/report.md, written from the run's own files.

It reads only JSON, CSV and PNG files (ar.json, segm_eval.json, the ablation tables, the
training log, figures.json and its pictures), so changing the report never runs the network.
This run's figures come first; the paper's published figures follow in their own section,
for reference, never beside this run's numbers. Pictures are linked relative to the report so
the folder can be moved or published as a whole. With --ar-table / --map-table the AR and mAP
tables are also written as CSV (for Snakemake's HTML report), with --loss-plot the training
loss curve as PNG.

Example: ifcn report --config results/synthetic/config.yaml --ar results/synthetic/val/ar.json
--figures results/synthetic/figures/figures.json --out results/synthetic/report.md
"""

from __future__ import annotations

import argparse

from ifcn import atomic
from ifcn.config import command_config, config_option
from ifcn.errors import IfcnError
from ifcn.reporting.plots import plot_loss
from ifcn.reporting.report import ar_table, build_report, map_table
from ifcn.reporting.summaries import (
    read_ar,
    read_segm_eval,
    read_training_log,
)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn report",
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_option(parser)
    parser.add_argument("--ar", required=True, help="ar.json of the validation proposals")
    parser.add_argument("--segm-eval", help="segm_eval.json of the downstream classifier")
    parser.add_argument("--ablation-k", help="ablation_k.csv")
    parser.add_argument("--ablation-head", help="ablation_head.csv")
    parser.add_argument("--figures", help="figures.json of `ifcn viz --pictures`")
    parser.add_argument("--train-log", help="train_log.csv of `ifcn train` (the loss curve)")
    parser.add_argument("--loss-plot", help="PNG of the loss curve to write (with --train-log)")
    parser.add_argument(
        "--benchmarks", help="folder of the run's Snakemake benchmark files (stage times)"
    )
    parser.add_argument("--ar-table", help="CSV of this run's AR table to write")
    parser.add_argument("--map-table", help="CSV of this run's mAP table to write")
    parser.add_argument("--out", required=True, help="report.md to write")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.loss_plot and not args.train_log:
        raise IfcnError("--loss-plot needs --train-log")
    if args.map_table and not args.segm_eval:
        raise IfcnError("--map-table needs --segm-eval")
    config = command_config(args)
    text = build_report(
        config,
        args.ar,
        args.out,
        args.segm_eval,
        args.ablation_k,
        args.ablation_head,
        args.figures,
        args.train_log,
        args.loss_plot,
        args.benchmarks,
    )
    if args.loss_plot:
        plot_loss(read_training_log(args.train_log), args.loss_plot)
    if args.ar_table:
        atomic.write_text(args.ar_table, ar_table(read_ar(args.ar)).to_csv(index=False))
    if args.map_table:
        segm = read_segm_eval(args.segm_eval)
        atomic.write_text(args.map_table, map_table(segm).to_csv(index=False))
    atomic.write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0
