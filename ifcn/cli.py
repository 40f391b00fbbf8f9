"""`ifcn <stage> ...`: git-style dispatch to the stage modules.

Each stage module defines `get_args_parser(add_help=True)` and `main(args)`; this layer only
parses and calls. Modules are imported lazily so a light stage (evaluate, nms) does not pay for
importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ifcn.errors import IfcnError

# command (words) -> module holding get_args_parser() and main(args)
COMMANDS: dict[tuple[str, ...], str] = {
    ("data", "synth"): "ifcn.data.synth",
    ("data", "download"): "ifcn.data.download",
    ("data", "convert"): "ifcn.data.convert",
    ("data", "check"): "ifcn.data.check",
    ("train",): "ifcn.train",
    ("infer",): "ifcn.proposals.infer",
    ("merge",): "ifcn.proposals.merge",
    ("nms",): "ifcn.proposals.nms",
    ("export",): "ifcn.proposals.export",
    ("evaluate",): "ifcn.evaluation.evaluate",
    ("viz",): "ifcn.viz",
    ("classify", "train"): "ifcn.classify.train",
    ("classify", "predict"): "ifcn.classify.predict",
    ("classify", "evaluate"): "ifcn.classify.evaluate",
    ("report",): "ifcn.report",
    ("ablation",): "ifcn.ablation",
    ("weights", "fetch"): "ifcn.weights",
}


def _usage() -> str:
    names = "\n".join("  ifcn " + " ".join(words) for words in COMMANDS)
    return f"usage: ifcn <command> [options]\n\ncommands:\n{names}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = next((w for w in COMMANDS if tuple(argv[: len(w)]) == w), None)
    if words is None:
        if argv and argv[0] in ("-V", "--version"):
            from ifcn import __version__

            print(f"ifcn {__version__}")
            return 0
        stream = sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr
        stream.write(_usage())
        return 0 if stream is sys.stdout else 2
    module_name = COMMANDS[words]
    prog = "ifcn " + " ".join(words)
    module = importlib.import_module(module_name)
    parser: argparse.ArgumentParser = module.get_args_parser()
    parser.prog = prog
    args = parser.parse_args(argv[len(words) :])
    try:
        result = module.main(args)
    except IfcnError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
