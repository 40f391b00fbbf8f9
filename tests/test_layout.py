"""The package's layering: nothing imports a CLI module, every package says what it holds; the
tests mirror the package module by module and read nothing outside the repository."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import ifcn
from ifcn.cli import COMMANDS

PACKAGE = Path(ifcn.__file__).resolve().parent
TESTS = Path(__file__).resolve().parent

# Test modules that check a whole (an install, a workflow, a stage end to end, one kind of fault
# across several modules) rather than one module, so they name none; each with what it checks.
WHOLE = {
    "test_install.py": "the wheel, the sdist, the conda file, the Python floor",
    "test_layout.py": "the package's layout and these rules for the tests",
    "test_workflow.py": "the Snakemake workflow as users drive it",
    "test_slurm.py": "the workflow on a SLURM cluster",
    "classify/test_learning.py": "the classifier stage end to end against chance (slow)",
    "data/test_voc_split.py": "the paper's VOC/SBD split: convert, overlap and the workflow's plan",
    "proposals/test_faults.py": "bad files and faults of infer, merge, nms and export",
    "proposals/test_hostile_files.py": "hostile HDF5 files against the proposal file readers",
    "training/test_instancefcn_faults.py": "training killed, resumed, fed bad input (subprocesses)",
}


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


def misnamed_tests(tests: Path, package: Path, whole: Iterable[str] = ()) -> list[str]:
    """Test modules named after no module of the package they mirror: tests/<p>/test_<m>.py needs
    <package>/<p>/<m>.py or <package>/<p>/<m>/ (or, when <m> is <p>'s own name, <p>/__init__.py);
    ``whole`` lists the exceptions, as paths relative to ``tests``."""
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        relative = path.relative_to(tests)
        folder = package.joinpath(*relative.parts[:-1])
        name = relative.stem.removeprefix("test_")
        mirrored = (folder / f"{name}.py").is_file() or (folder / name).is_dir()
        itself = (
            len(relative.parts) > 1 and name == folder.name and (folder / "__init__.py").is_file()
        )
        if not (mirrored or itself or relative.as_posix() in whole):
            found.append(relative.as_posix())
    return found


def test_every_test_module_is_named_after_the_module_it_tests():
    assert misnamed_tests(TESTS, PACKAGE, WHOLE) == []
    stale = sorted(set(WHOLE) - set(misnamed_tests(TESTS, PACKAGE)))
    assert not stale, f"listed as testing a whole but missing or named after a module: {stale}"


def test_a_misnamed_test_module_is_found(tmp_path):
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    for name in ("top.py", "data/__init__.py", "data/rle.py", "data/formats/__init__.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).touch()
    names = ["test_top.py", "test_whole.py", "data/test_rle.py", "data/test_formats.py",
             "data/test_data.py", "data/test_rles.py", "data/test_top.py",
             "model/test_rle.py"]  # fmt: skip
    for name in names:
        (tests / name).parent.mkdir(parents=True, exist_ok=True)
        (tests / name).touch()
    wrong = ["data/test_rles.py", "data/test_top.py", "model/test_rle.py"]
    assert misnamed_tests(tests, package, ["test_whole.py"]) == wrong
    assert misnamed_tests(tests, package) == sorted([*wrong, "test_whole.py"])


# The machine's work folder and the data folder beside the checkout, spelled in pieces so that
# this file does not match its own patterns.
WORK, SHARED = "/" + "work", "shar" + "ed"
OUTSIDE = re.compile(
    rf"(?<![\w.~-]){WORK}(?![\w.-])"  # an absolute path into the work folder
    rf"|\.\./(?:\.\./)*{SHARED}(?![\w.-])"  # parent steps, then the data folder
    rf"|/\s*[\"']{SHARED}(?:/|[\"'])"  # a path joined to it: parents[2] / "<it>/data"
)


def outside_paths(files: Iterable[Path]) -> list[str]:
    """``file:line: text`` of each line naming a path outside the repository (the work folder,
    the data folder beside the checkout): tests run on any clone, so their data lives in tests/."""
    return [
        f"{path}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]


def test_no_test_reads_a_path_outside_the_repository():
    files = [p for p in sorted(TESTS.rglob("*")) if p.suffix in {".py", ".yaml", ".md", ".txt"}]
    assert len(files) > 50
    assert outside_paths(files) == []


def test_a_path_outside_the_repository_is_found(tmp_path):
    work, shared = WORK, SHARED
    bad = [
        f'BORRAT = Path("{work}/{shared}/data/borrat/valid")',
        f'ROOT = Path("{work}")',
        f'BORRAT = Path(__file__).parents[2].parent / "{shared}/data/borrat"',
        f"data = Path(__file__).parent / '{shared}'",
        f'json.load(open("../../{shared}/data/x.json"))',
        f'subprocess.run(["ls", "../{shared}"])',
    ]
    good = [
        'BORRAT = Path(__file__).resolve().parents[1] / "fixtures" / "borrat"',
        f'config["data"]["allow_{shared}_images"] = True',
        'name = "../../victim.png"  # a hostile name, not a read',
        f'path = "/data/coco/{shared}.json"; home = "~{work}"; other = "{work}ers"',
        f'"{shared}_masks" in text',
    ]
    test = tmp_path / "test_x.py"
    test.write_text("\n".join([*bad, *good]) + "\n")
    found = outside_paths([test])
    assert [line.split(": ", 1)[1] for line in found] == bad
