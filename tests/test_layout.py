"""The package's layering: nothing imports a CLI module, every package says what it holds."""

from __future__ import annotations

import ast
from pathlib import Path

import ifcn
from ifcn.cli import COMMANDS

PACKAGE = Path(ifcn.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(tree: ast.Module, modules: dict[str, ast.Module]) -> set[str]:
    """Every ifcn module the tree imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules}


def _defines(tree: ast.Module, name: str) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def test_commands_are_the_modules_of_ifcn_commands():
    """Every `ifcn <command>` is one module of ifcn.commands and every such module a command."""
    modules = _modules()
    commands = {name for name in modules if name.startswith("ifcn.commands.")}
    assert set(COMMANDS.values()) == commands
    for name in commands:
        assert _defines(modules[name], "get_args_parser") and _defines(modules[name], "main")


def test_only_commands_parse_arguments():
    """The library takes plain arguments: no module outside ifcn.commands has a CLI entry."""
    modules = _modules()
    outside = [
        name
        for name, tree in modules.items()
        if not name.startswith("ifcn.commands") and name != "ifcn.cli"
        if _defines(tree, "main") or _defines(tree, "get_args_parser")
    ]
    assert not outside, outside


def test_no_module_imports_a_command():
    modules = _modules()
    commands = {name for name in modules if name.startswith("ifcn.commands.")}
    offenders = [
        f"{name} imports {target}"
        for name, tree in modules.items()
        if name not in ("ifcn.cli", "ifcn.__main__") and not name.startswith("ifcn.commands")
        for target in sorted(_imported(tree, modules) & commands)
    ]
    assert not offenders, offenders


def test_every_package_has_a_docstring():
    modules = _modules()
    packages = [name for name in modules if (PACKAGE.parent / name.replace(".", "/")).is_dir()]
    missing = [name for name in packages if not ast.get_docstring(modules[name])]
    assert not missing, missing


def test_tests_mirror_the_packages():
    tests = Path(__file__).resolve().parent
    for package in (
        "proposals",
        "evaluation",
        "model",
        "data",
        "classify",
        "training",
        "reporting",
    ):
        assert (tests / package).is_dir(), f"tests/{package}/ mirrors ifcn/{package}/"


def test_the_data_contract_imports_no_stage():
    """ifcn.data (the files every stage reads: JSON, RLE, masks) sits below the stages, and the
    plots take plain data: proposals may import data, not the reverse."""
    modules = _modules()
    stages = ("ifcn.proposals", "ifcn.evaluation", "ifcn.classify", "ifcn.reporting",
              "ifcn.training", "ifcn.model", "ifcn.commands")  # fmt: skip
    rules = {"ifcn.data": stages, "ifcn.reporting.plots": ("ifcn.evaluation", "ifcn.training")}
    offenders = [
        f"{name} imports {target}"
        for name, tree in modules.items()
        for layer, forbidden in rules.items()
        if name == layer or name.startswith(f"{layer}.")
        for target in sorted(_imported(tree, modules))
        if target.startswith(forbidden)
    ]
    assert not offenders, offenders
