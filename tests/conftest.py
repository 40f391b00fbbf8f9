"""Shared fixtures: a tiny synthetic dataset and configs pointing at it; a SLURM test cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ifcn.config import defaults
from ifcn.data.synth import generate_dataset
from tests import slurm_cluster as cluster
from tests.configs import ROOT, write_config

_config: list[pytest.Config] = []
_session_pid = os.getpid()


def pytest_configure(config: pytest.Config) -> None:
    _config[:] = [config]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A failure is named as it happens, not only in the summary at the end: a run that CI
    stops at its time limit (or a hang that faulthandler_timeout ends) still says what failed.
    A forked child that unwound into pytest's frames (a bug) ends here, named, instead of
    running the rest of the tests as a second pytest that its parent waits for."""
    if os.getpid() != _session_pid:
        os.write(2, f"\nA CHILD PROCESS ran pytest's code ({report.nodeid}): ended\n".encode())
        os._exit(70)
    terminal = _config[0].pluginmanager.get_plugin("terminalreporter") if _config else None
    if not report.failed or terminal is None:
        return
    crash = getattr(report.longrepr, "reprcrash", None)
    where = f"{crash.path}:{crash.lineno}: " if crash else ""
    message = crash.message if crash else str(report.longrepr).strip().splitlines()[-1:]
    terminal.write_line(f"\nFAILED ({report.when}) {report.nodeid}: {where}{message}"[:2000])


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The dataset of config/tiny.yaml, generated once per session."""
    synth = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())["data"]["synth"]
    out = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(out, defaults("data.synth") | synth)
    return out


@pytest.fixture
def tiny_config(tmp_path, tiny_data) -> Path:
    return write_config(tmp_path, tiny_data)


@pytest.fixture
def make_config():
    """``write_config`` as a fixture, for tests that need configs of their own."""
    return write_config


def slurm_tests_required() -> bool:
    """In CI (CI set, or .ci/run, which sets IFCN_SLURM_TESTS=required) the SLURM tests run."""
    return bool(os.environ.get("CI")) or os.environ.get("IFCN_SLURM_TESTS") == "required"


@pytest.fixture(scope="session")
def slurm_cluster():
    """One SLURM cluster on this machine for every test that needs one (tests/slurm_cluster.py),
    stopped at the end of the session whatever the tests did; skipped, saying what to install,
    where the OS packages are missing, except in CI, where that is a failure."""
    missing = cluster.missing_commands()
    if missing:
        problem = (
            f"SLURM tests need {', '.join(missing)}: "
            f"apt-get install {cluster.PACKAGES} (Debian, as root)"
        )
        if slurm_tests_required():
            pytest.fail(problem)
        pytest.skip(problem)
    running = cluster.start()
    yield running
    cluster.stop(running)
