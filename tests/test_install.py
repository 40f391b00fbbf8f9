"""Installs: a wheel that works outside the checkout, the conda file, the Python floor, the
project's papers (LICENSE, CITATION.cff)."""

from __future__ import annotations

import email
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import ifcn
from tests.configs import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# what a clone holds, minus what a run or a build leaves behind
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "results", "resources", ".snakemake", "build", "dist", "*.egg-info",
    "__pycache__", ".pytest_cache", ".ruff_cache",
)  # fmt: skip


def floor(specifier: str) -> Version:
    """The lowest version a ``>=`` specifier allows."""
    (lower,) = [s for s in SpecifierSet(specifier) if s.operator == ">="]
    return Version(lower.version)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout's sources, so building leaves nothing in the checkout."""
    copy = tmp_path_factory.mktemp("src") / "ifcn"
    shutil.copytree(ROOT, copy, ignore=NOT_SOURCE)
    return copy


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH: only what is installed may be imported."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.slow
def test_a_wheel_install_trains_outside_the_checkout(tmp_path, source):
    """`pip install .` (not editable) into a fresh venv, then `ifcn train` on config/tiny.yaml
    from a folder that is not the checkout. The venv borrows the cached venv's packages through
    a .pth file (torch and the other pins), so nothing is downloaded."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    borrowed = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    (Path(purelib) / "borrowed_pins.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--ignore-installed", "."],
        cwd=source, env=clean_env(), check=True,
    )  # fmt: skip

    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "config" / "tiny.yaml", work / "tiny.yaml")
    where = subprocess.run(
        [python, "-c", "import ifcn, ifcn.config; print(ifcn.__file__, ifcn.config.SCHEMA_PATH)"],
        cwd=work, env=clean_env(), capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(purelib) for p in where), where

    ifcn_command = venv / "bin" / "ifcn"
    synth = yaml.safe_load((work / "tiny.yaml").read_text())["data"]["synth"]
    options = [f"--{key.replace('_', '-')}={value}" for key, value in synth.items()]
    commands = [
        [ifcn_command, "--version"],
        [ifcn_command, "data", "synth", "--out", "resources/tiny", *options],
        [ifcn_command, "train", "--config", "tiny.yaml", "--out", "results/tiny/train"]
        + ["--iters", "2"],
    ]
    for command in commands:
        proc = subprocess.run(command, cwd=work, env=clean_env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert (work / "results" / "tiny" / "train" / "model_final.pt").is_file()


def test_the_sdist_builds_a_wheel_with_the_schema_and_the_license(tmp_path, source):
    """sdist -> wheel, as `python -m build` does: the sdist carries the schema from
    workflow/schemas, and the wheel ships it as ifcn/schemas with the license in its metadata."""
    build = "from setuptools import build_meta as b; import sys; print(b.{}(sys.argv[1]))"
    sdist_name = subprocess.run(
        [sys.executable, "-c", build.format("build_sdist"), tmp_path],
        cwd=source, capture_output=True, text=True, check=True,
    ).stdout.split()[-1]  # fmt: skip
    with tarfile.open(tmp_path / sdist_name) as sdist:
        members = {
            Path(name).relative_to(Path(name).parts[0]).as_posix() for name in sdist.getnames()
        }
        sdist.extractall(tmp_path / "unpacked", filter="data")
    expected = {"workflow/schemas/config.schema.yaml", "LICENSE", "CITATION.cff", "README.md"}
    assert expected <= members

    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel_name = subprocess.run(
        [sys.executable, "-c", build.format("build_wheel"), tmp_path],
        cwd=unpacked, capture_output=True, text=True, check=True,
    ).stdout.split()[-1]  # fmt: skip
    with zipfile.ZipFile(tmp_path / wheel_name) as wheel:
        names = set(wheel.namelist())
        dist_info = f"ifcn-{ifcn.__version__}.dist-info"
        meta = email.message_from_bytes(wheel.read(f"{dist_info}/METADATA"))
        shipped = wheel.read("ifcn/schemas/config.schema.yaml")
    assert f"{dist_info}/licenses/LICENSE" in names
    assert shipped == (ROOT / "workflow" / "schemas" / "config.schema.yaml").read_bytes()
    assert meta["Version"] == ifcn.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == PROJECT["requires-python"]


def test_every_package_is_listed_for_the_wheel():
    """pyproject lists the packages (so it can map ifcn.schemas): a new one must be added."""
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "ifcn").rglob("__init__.py")
    }
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == on_disk | {"ifcn.schemas"}
    schemas = ROOT / setuptools["package-dir"]["ifcn.schemas"]
    assert schemas == ROOT / "workflow" / "schemas"
    assert all((schemas / f).is_file() for f in setuptools["package-data"]["ifcn.schemas"])


def test_the_python_floor_is_what_the_pins_and_the_makefile_need():
    """requires-python is the highest floor among the pinned packages, the Makefile's tomllib
    (3.11) is within it, and environment.yml's Python satisfies it."""
    project_floor = floor(PROJECT["requires-python"])
    floors = {}
    for line in PROJECT["dependencies"]:
        name = Requirement(line).name
        requires = metadata.metadata(name)["Requires-Python"]
        if requires and any(s.operator == ">=" for s in SpecifierSet(requires)):
            floors[name] = floor(requires)
    assert project_floor == max(floors.values()), floors
    assert "tomllib" in (ROOT / "Makefile").read_text() and project_floor >= Version("3.11")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    (python,) = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert Version(python.removeprefix("python=")) in SpecifierSet(PROJECT["requires-python"])


def test_makefile_says_which_python_it_needs(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    too_old = tmp_path / "python3.10"
    too_old.write_text("#!/bin/sh\necho 'ModuleNotFoundError: tomllib' >&2\nexit 1\n")
    too_old.chmod(0o755)
    proc = subprocess.run(
        ["make", "-n", "-C", ROOT, "run", f"PYTHON={too_old}"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "needs Python >= 3.11" in proc.stderr


def test_environment_yml_has_the_pins_and_no_local_path():
    """The rules' conda env: exactly the pins; no path, since Snakemake copies the file into
    .snakemake/conda/ before conda reads it (the rules find the package on PYTHONPATH)."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert sorted(pip) == sorted(PROJECT["dependencies"])


def test_every_rule_runs_in_the_conda_env():
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = path.read_text()
        # every rule has a benchmark: (the template's habit), so count rules by it
        assert text.count("benchmark:") == text.count('"../../environment.yml"'), path


def test_license_is_the_mit_license_pyproject_states():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the ifcn authors" in text
    assert "Permission is hereby granted, free of charge" in text
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]


def test_citation_cff_has_the_required_keys_and_cites_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors"):
        assert cff.get(key), key
    assert cff["cff-version"] == "1.2.0"
    assert cff["version"] == ifcn.__version__ and cff["license"] == PROJECT["license"]
    paper = cff["preferred-citation"]
    for key in ("type", "title", "authors"):
        assert paper.get(key), key
    for person in [*cff["authors"], *paper["authors"]]:
        assert person.get("family-names") or person.get("name"), person
    assert paper["title"] == "Instance-sensitive Fully Convolutional Networks"
    assert [a["family-names"] for a in paper["authors"]] == ["Dai", "He", "Li", "Ren", "Sun"]
    assert paper["year"] == 2016 and "ECCV" in paper["conference"]["name"]
