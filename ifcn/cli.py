"""`ifcn <command> ...`: git-style dispatch to the stage modules, and the help a user reads.

Each stage module defines `get_args_parser(add_help=True)` and `main(args)`; this layer only
parses, calls, and turns the two failures of normal use into one line and exit status 2: bad
input (`IfcnError`) and a file the system refuses (`OSError`: unwritable folder, full disk).
Anything else is a bug and keeps its traceback. SIGTERM and SIGINT, from the moment the CLI
starts, end a stage with one line and 143 / 130 (`ifcn.signals`, whatever error the interrupted
code then raises), every stage gets a writable matplotlib folder (`ifcn.mplconfig`), and torch's
threads fit a CPU quota (`ifcn.cpus`). The stage modules' docstrings are written for developers,
so the one-line summary and the example that `--help` shows live here, in `HELP`. Modules are
imported lazily so a light stage (evaluate, nms) does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import signal
import sys
import textwrap
from collections.abc import Callable

from ifcn import signals
from ifcn.atomic import remove_leftovers
from ifcn.cpus import limit_threads
from ifcn.errors import IfcnError, describe_os_error
from ifcn.mplconfig import matplotlib_config_dir

# command (words) -> module holding get_args_parser() and main(args)
COMMANDS: dict[tuple[str, ...], str] = {
    ("data", "synth"): "ifcn.commands.data_synth",
    ("data", "download"): "ifcn.commands.data_download",
    ("data", "convert"): "ifcn.commands.data_convert",
    ("data", "check"): "ifcn.commands.data_check",
    ("train",): "ifcn.commands.train",
    ("infer",): "ifcn.commands.infer",
    ("merge",): "ifcn.commands.merge",
    ("nms",): "ifcn.commands.nms",
    ("export",): "ifcn.commands.export",
    ("evaluate",): "ifcn.commands.evaluate",
    ("viz",): "ifcn.commands.viz",
    ("classify", "train"): "ifcn.commands.classify_train",
    ("classify", "predict"): "ifcn.commands.classify_predict",
    ("classify", "evaluate"): "ifcn.commands.classify_evaluate",
    ("report",): "ifcn.commands.report",
    ("ablation",): "ifcn.commands.ablation",
    ("weights", "fetch"): "ifcn.commands.weights_fetch",
    ("weights", "list"): "ifcn.commands.weights_list",
}

# command -> (one-line summary, example): `ifcn --help` lists the summaries, `ifcn <command>
# --help` shows both. Every command of COMMANDS has an entry (tests/test_cli.py).
HELP: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "synth"): (
        "generate the synthetic dataset: COCO JSON and PNGs",
        "ifcn data synth --config results/synthetic/config.yaml --out resources/synthetic\n"
        "ifcn data synth --out resources/synthetic --seed 0 --num-train 200 --num-val 50",
    ),
    ("data", "download"): (
        "download, verify and unpack a dataset's archives",
        "ifcn data download --config results/pennfudan/config.yaml\n"
        "ifcn data download --dataset pennfudan --out resources/pennfudan",
    ),
    ("data", "convert"): (
        "convert VOC, SBD, COCO or Penn-Fudan to COCO JSON",
        "ifcn data convert --config results/pennfudan/config.yaml --split train\n"
        "ifcn data convert --format pennfudan --root resources/pennfudan/PennFudanPed \\\n"
        "    --split train --out resources/pennfudan/train.json",
    ),
    ("data", "check"): (
        "check a COCO instances JSON and its images",
        "ifcn data check --config results/synthetic/config.yaml --split val\n"
        "ifcn data check --json resources/synthetic/val.json --images resources/synthetic/images",
    ),
    ("train",): (
        "train InstanceFCN (resumable; GPUs with torchrun)",
        "ifcn train --config results/synthetic/config.yaml --out results/synthetic/train \\\n"
        "    --resume auto",
    ),
    ("infer",): (
        "run a trained model on images: candidates.h5",
        "ifcn infer --config results/synthetic/config.yaml \\\n"
        "    --checkpoint results/synthetic/train/model_final.pt \\\n"
        "    --images resources/synthetic/val.json --shard 0/2 \\\n"
        "    --out results/synthetic/val/shards/candidates-0.h5",
    ),
    ("merge",): (
        "merge the candidates.h5 shards of one inference",
        "ifcn merge --inputs results/synthetic/val/shards/candidates-*.h5 \\\n"
        "    --out results/synthetic/val/candidates.h5",
    ),
    ("nms",): (
        "candidates.h5 to proposals.h5: NMS, best N per image",
        "ifcn nms --config results/synthetic/config.yaml \\\n"
        "    --candidates results/synthetic/val/candidates.h5 \\\n"
        "    --out results/synthetic/val/proposals.h5\n"
        "ifcn nms --candidates candidates.h5 --out proposals.h5 --iou 0.7 --top-n 100",
    ),
    ("export",): (
        "proposals.h5 to a COCO results JSON (RLE masks)",
        "ifcn export --proposals results/synthetic/val/proposals.h5 --top-n 100 \\\n"
        "    --out proposals.json",
    ),
    ("evaluate",): (
        "average recall (AR@10/100/1000) of proposals",
        "ifcn evaluate --config results/synthetic/config.yaml \\\n"
        "    --gt resources/synthetic/val.json --proposals results/synthetic/val/proposals.h5 \\\n"
        "    --out results/synthetic/val/ar.json",
    ),
    ("viz",): (
        "draw proposals and score maps (one image, a run, a folder)",
        "ifcn viz --config results/synthetic/config.yaml \\\n"
        "    --checkpoint results/synthetic/train/model_final.pt \\\n"
        "    --images resources/synthetic/val.json --image-id 1 \\\n"
        "    --proposals results/synthetic/val/proposals.h5 --out pictures/",
    ),
    ("classify", "train"): (
        "train the classifier that labels proposals",
        "ifcn classify train --config results/synthetic/config.yaml \\\n"
        "    --proposals results/synthetic/train/proposals.h5 \\\n"
        "    --gt resources/synthetic/train.json \\\n"
        "    --init-from results/synthetic/train/model_final.pt \\\n"
        "    --out results/synthetic/classify",
    ),
    ("classify", "predict"): (
        "label proposals: instance segmentation results",
        "ifcn classify predict --config results/synthetic/config.yaml \\\n"
        "    --checkpoint results/synthetic/classify/model_final.pt \\\n"
        "    --proposals results/synthetic/val/proposals.h5 \\\n"
        "    --images resources/synthetic/val.json --out results/synthetic/val/segm.json",
    ),
    ("classify", "evaluate"): (
        "mAP@0.5 and mAP@0.7 of instance segmentation",
        "ifcn classify evaluate --config results/synthetic/config.yaml \\\n"
        "    --gt resources/synthetic/val.json --results results/synthetic/val/segm.json \\\n"
        "    --out results/synthetic/val/segm_eval.json",
    ),
    ("weights", "fetch"): (
        "download a backbone's ImageNet weights",
        "ifcn weights fetch --backbone vgg16",
    ),
    ("weights", "list"): (
        "where each backbone's ImageNet weights are found",
        "ifcn weights list",
    ),
    ("report",): (
        "write a run's report.md: tables, curves, pictures",
        "ifcn report --config results/synthetic/config.yaml \\\n"
        "    --ar results/synthetic/val/ar.json --out results/synthetic/report.md",
    ),
    ("ablation",): (
        "the paper's ablations: variant configs, the table",
        "ifcn ablation config --config results/synthetic/config.yaml --variant k=3 \\\n"
        "    --out results/synthetic/ablation/k=3/config.yaml\n"
        "ifcn ablation table --ar results/synthetic/ablation/k=*/val/ar.json \\\n"
        "    --variants k=1 k=3 k=5 k=7 --out results/synthetic/ablation_k.csv",
    ),
}

EXIT_STATUS = (
    "exit status: 0 done; 2 bad usage, bad input or a file the system refused\n"
    "(one line on stderr naming the file); 143 stopped by SIGTERM, 130 by SIGINT\n"
    "(Ctrl-C), leaving no temporaries; 1 an unexpected error (a bug: its traceback\n"
    "follows)."
)


def _listing(commands: list[tuple[str, ...]]) -> str:
    names = [" ".join(words) for words in commands]
    width = max(map(len, names))
    lines = []
    for name, words in zip(names, commands, strict=True):
        summary = HELP[words][0] if words in HELP else ""
        lines.append(f"  {name.ljust(width)}  {summary}".rstrip())
    return "\n".join(lines)


def _usage() -> str:
    return (
        "usage: ifcn <command> [options]\n\n"
        "InstanceFCN instance segment proposals (Dai et al., ECCV 2016). Each stage of\n"
        "the pipeline is a command; Snakemake chains them (`snakemake --cores all`).\n\n"
        f"commands:\n{_listing(list(COMMANDS))}\n\n"
        "options:\n  -h, --help     show this help and exit\n"
        "  -V, --version  show the version and exit\n\n"
        "Run `ifcn <command> --help` for a command's options and an example.\n"
        f"{EXIT_STATUS}\n"
    )


def _group_usage(group: str) -> str:
    commands = [words for words in COMMANDS if words[0] == group]
    return (
        f"usage: ifcn {group} <command> [options]\n\n"
        f"commands:\n{_listing(commands)}\n\n"
        f"Run `ifcn {group} <command> --help` for a command's options and an example.\n"
    )


def _closest(typed: list[str]) -> str | None:
    """The command (or command group) nearest to what was typed, for a "did you mean"."""
    groups = {words[0] for words in COMMANDS if len(words) > 1}
    if typed[0] in groups:
        if len(typed) < 2:
            return None
        subcommands = [words[1] for words in COMMANDS if words[0] == typed[0]]
        match = difflib.get_close_matches(typed[1], subcommands, n=1, cutoff=0.6)
        return f"{typed[0]} {match[0]}" if match else None
    names = {" ".join(words) for words in COMMANDS} | groups
    for count in (2, 1):
        if len(typed) >= count:
            match = difflib.get_close_matches(" ".join(typed[:count]), names, n=1, cutoff=0.6)
            if match:
                return match[0]
    return None


def _unknown(argv: list[str]) -> int:
    typed = []
    for word in argv[:2]:
        if word.startswith("-"):
            break
        typed.append(word)
    if not typed:
        print(f"ifcn: error: unknown option '{argv[0]}' (see `ifcn --help`)", file=sys.stderr)
        return 2
    guess = _closest(typed)
    if guess:
        hint = f"; did you mean 'ifcn {guess}'?"
    elif typed[0] in {words[0] for words in COMMANDS if len(words) > 1}:
        hint = f"; the {typed[0]} commands are " + ", ".join(
            words[1] for words in COMMANDS if words[0] == typed[0]
        )
    else:
        hint = ""
    print(
        f"ifcn: error: unknown command '{' '.join(typed)}'{hint} (see `ifcn --help`)",
        file=sys.stderr,
    )
    return 2


def _with_raw_description(formatter: type[argparse.HelpFormatter]) -> type:
    """`formatter` keeping the line breaks of the description and epilog (the examples)."""
    if issubclass(formatter, argparse.RawDescriptionHelpFormatter):
        return formatter
    return type("Formatter", (argparse.RawDescriptionHelpFormatter, formatter), {})


def _user_help(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
    """Replace the module's developer docstring by the user-facing summary and example."""
    if words not in HELP:
        return
    summary, example = HELP[words]
    parser.description = summary[0].upper() + summary[1:] + "."
    parser.epilog = "example:\n" + textwrap.indent(example, "  ")
    parser.formatter_class = _with_raw_description(parser.formatter_class)


def _silence_stdout() -> None:
    """The reader of our output left (`ifcn data check ... | head`): nothing more to say, and
    the interpreter's final flush must not fail again on the closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _fail(prog: str, message: str, status: int = 2) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    restore = signals.install()  # before a stage's imports: Ctrl-C during them is one line too
    try:
        with matplotlib_config_dir():
            return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        restore()
        remove_leftovers()  # a temporary a stop caught before its writer could remove it


def _main(argv: list[str]) -> int:
    words = next((w for w in COMMANDS if tuple(argv[: len(w)]) == w), None)
    if words is None:
        groups = {w[0] for w in COMMANDS if len(w) > 1}
        if not argv:
            sys.stderr.write(_usage())
            return 2
        if argv[0] in ("-h", "--help"):
            sys.stdout.write(_usage())
            return 0
        if argv[0] in ("-V", "--version"):
            from ifcn import __version__

            print(f"ifcn {__version__}")
            return 0
        if argv[0] in groups and argv[1:2] in ([], ["-h"], ["--help"]):
            stream = sys.stderr if len(argv) == 1 else sys.stdout
            stream.write(_group_usage(argv[0]))
            return 2 if stream is sys.stderr else 0
        return _unknown(argv)
    prog = "ifcn " + " ".join(words)
    parsed: list[argparse.Namespace] = []

    def run() -> int:
        module = importlib.import_module(COMMANDS[words])
        limit_threads()  # torch's threads, if the stage imported it, fit a CPU quota
        parser: argparse.ArgumentParser = module.get_args_parser()
        parser.prog = prog
        _user_help(parser, words)
        parsed.append(parser.parse_args(argv[len(words) :]))
        args = parsed[0]
        ranks = getattr(args, "nproc_per_node", None)
        if ranks is not None and ranks != 1:  # the stage in forked ranks, each as a stage
            from ifcn.training.launch import fork_ranks

            module.validate(args)
            return fork_ranks(ranks, lambda: _guarded(prog, lambda: module.main(args), parsed))
        return module.main(args)

    return _guarded(prog, run, parsed)


def _guarded(prog: str, run: Callable[[], int | None], parsed: list[argparse.Namespace]) -> int:
    """`run()`'s exit status, with bad input, a refused file and a stop each turned into one
    line and their status."""
    try:
        try:
            result = run()
        except BaseException as exc:
            stop = _stop_behind(exc)
            if stop is None:
                raise
            return _stopped(prog, stop)
    except IfcnError as exc:
        return _fail(prog, str(exc), getattr(exc, "exit_status", 2))
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except OSError as exc:
        out = getattr(parsed[0], "out", None) if parsed else None
        return _fail(prog, describe_os_error(exc, writing=out))
    stop = signals.requested()
    if stop is not None:  # its exception was swallowed on the way (see ifcn.signals)
        return _stopped(prog, stop)
    return int(result or 0)


def _stop_behind(exc: BaseException) -> signals.Stopped | None:
    """The stop that ended the stage, if a signal did: what it interrupted may surface as
    another error (an import failing half-way, a C library's own error)."""
    if isinstance(exc, SystemExit):
        return None
    stop = signals.requested()
    if stop is None and isinstance(exc, KeyboardInterrupt):
        stop = exc if isinstance(exc, signals.Stopped) else signals.Stopped(signal.SIGINT)
    return stop


def _stopped(prog: str, stop: signals.Stopped) -> int:
    print(f"{prog}: stopped by {stop.name}", file=sys.stderr)
    return stop.exit_status


if __name__ == "__main__":
    sys.exit(main())
