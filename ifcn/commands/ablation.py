"""`ifcn ablation config|table`: the paper's ablations (Tables 1 and 2) as runs of the workflow.

Each variant is the run's own config with a few keys overridden (``config``), trained and
evaluated by the same ``ifcn`` stages under results/<run>/ablation/<variant>/; ``table`` then
gathers the variants' ar.json files into one CSV (AR as fractions, one row per variant) and a
recall-vs-IoU plot. The variants are named once, in `ifcn.variants`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ifcn import atomic, strict_yaml
from ifcn.config import command_config, config_option, config_yaml, load_config, set_keys
from ifcn.errors import IfcnError
from ifcn.reporting.ablation import ablation_table
from ifcn.reporting.plots import plot_ablation
from ifcn.reporting.summaries import read_ar
from ifcn.variants import VARIANTS


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn ablation", description=__doc__, add_help=add_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="config|table")
    config = commands.add_parser(
        "config", help="write a variant's config: the run's config with keys overridden"
    )
    config_option(config, required=True)
    group = config.add_mutually_exclusive_group(required=True)
    group.add_argument("--variant", choices=list(VARIANTS), help="a named ablation variant")
    group.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override (repeatable)"
    )
    config.add_argument("--out", required=True, help="config.yaml to write")
    table = commands.add_parser("table", help="gather the variants' ar.json into one CSV")
    config_option(table, reads=False)
    table.add_argument("--ar", nargs="+", required=True, help="ar.json of each variant")
    table.add_argument("--variants", nargs="+", required=True, help="their names, same order")
    table.add_argument("--plot", help="recall-vs-IoU PNG of the variants")
    table.add_argument("--out", required=True, help="CSV to write")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.command == "config":
        config = load_config(args.config)
        if args.variant:
            overrides = VARIANTS[args.variant]
        else:
            overrides = dict(parse_setting(text) for text in args.set)
        names = {key: f"--set {key}" for key in overrides} if args.set else None
        result = set_keys(config, overrides, names, args.config)
        settings = ", ".join(f"{key}={value}" for key, value in overrides.items())
        note = f"{args.config} with {settings} (ifcn ablation)"
        path = atomic.write_text(args.out, config_yaml(result, note))
        print(f"wrote {path}")
        return 0
    command_config(args)
    frame = ablation_table(args.ar, args.variants)
    if args.plot:
        plot_ablation([read_ar(path) for path in args.ar], args.variants, Path(args.plot))
    atomic.write_text(args.out, frame.to_csv(index=False))
    print(frame.to_string(index=False))
    return 0


def parse_setting(text: str) -> tuple[str, object]:
    """``section.key=value`` with the value read as YAML (``null``, ``224``, ``deepmask``)."""
    key, sep, value = text.partition("=")
    if not sep or not key or "." not in key:
        raise IfcnError(f"--set wants section.key=value, got {text!r}")
    try:
        return key, strict_yaml.load(value)
    except strict_yaml.StrictYamlError as exc:
        raise IfcnError(f"--set {key}: {exc}") from None
    except yaml.YAMLError:
        raise IfcnError(f"--set {key}: not a YAML value: {value!r}") from None
