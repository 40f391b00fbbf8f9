"""Atomic outputs (DESIGN §11): normal permissions, no temporaries left, stale ones swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ifcn import cli
from ifcn.atomic import atomic_path, stale_temporaries, temporary_path, write_text
from ifcn.errors import IfcnError
from ifcn.evaluation.ar import write_outputs
from ifcn.proposals.candidates import CandidateWriter
from ifcn.proposals.format import ProposalWriter, write_proposals
from ifcn.proposals.table import Column, TableWriter
from ifcn.signals import Stopped
from tests.proposals.hand import candidate_attrs, score_map_candidates


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_outputs_get_the_permissions_of_a_normally_created_file(tmp_path, umask_022):
    text = write_text(tmp_path / "a.json", "{}")
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    proposals = tmp_path / "proposals.h5"
    attrs = {"config": {}, "checkpoint_sha256": "0", "dataset": "d", "scales": [1], "k": 1, "m": 2}
    write_proposals(proposals, [], attrs)
    candidates = tmp_path / "candidates.h5"
    with CandidateWriter(candidates, candidate_attrs()) as writer:
        writer.add(score_map_candidates(1, 3))
    for path in (text, tmp_path / "b.bin", proposals, candidates):
        assert _mode(path) == 0o644, path
    os.umask(0o027)
    assert _mode(write_text(tmp_path / "c.json", "{}")) == 0o640


def test_a_failed_block_leaves_neither_the_target_nor_a_temporary(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


class _StopAfterCreating:
    """`os.close` that raises a stop once the temporary exists, before its creator has its name:
    where a SIGTERM landed in a fresh-clone `make test` (viz left `.00002.png.png...tmp`)."""

    def __init__(self):
        self.close = os.close

    def __call__(self, fd: int) -> None:
        self.close(fd)
        raise Stopped(signal.SIGTERM)


@pytest.mark.parametrize("writer", ["atomic_path", "table", "evaluation outputs"])
def test_a_stop_right_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, writer):
    monkeypatch.setattr("ifcn.atomic.os.close", _StopAfterCreating())
    with pytest.raises(Stopped):
        if writer == "atomic_path":
            with atomic_path(tmp_path / "out.png"):
                pass
        elif writer == "table":
            TableWriter(tmp_path / "out.h5", {"format": "test"}, {"rows": {"x": Column("f4")}})
        else:
            write_outputs(None, tmp_path / "ar.json", {})
    assert list(tmp_path.iterdir()) == []


def test_a_stop_before_a_writers_with_begins_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Where a SIGTERM landed in `ifcn nms` under load: after ProposalWriter made its temporary,
    before the `with` that removes it began. The CLI removes what is left as the stage ends."""
    candidates = tmp_path / "candidates.h5"
    with CandidateWriter(candidates, candidate_attrs()) as writer:
        writer.add(score_map_candidates(1, 3))

    def stop_now(self):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(ProposalWriter, "__enter__", stop_now)
    out = tmp_path / "out"
    argv = ["nms", "--candidates", str(candidates), "--workers", "1", "--out", f"{out}/p.h5"]
    assert cli.main(argv) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ifcn nms: stopped by SIGTERM"
    assert list(out.iterdir()) == []


def test_a_folder_is_not_a_file_to_write(tmp_path):
    (tmp_path / "out.h5").mkdir()
    with pytest.raises(IfcnError, match="is a folder"):
        temporary_path(tmp_path / "out.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return int(process.stdout)


def test_stale_temporaries_of_the_same_target_are_swept_and_nothing_else(tmp_path):
    target = tmp_path / "candidates-0.h5"
    mine = temporary_path(target)  # this process runs: its temporary stays
    host = mine.name.split(".")[-4]
    dead = tmp_path / f".candidates-0.h5.{host}.{_dead_pid()}.0badcafe.tmp"
    other_target = tmp_path / f".candidates-1.h5.{host}.{_dead_pid()}.0badcafe.tmp"
    other_host = tmp_path / f".candidates-0.h5.elsewhere.{_dead_pid()}.0badcafe.tmp"
    for path in (dead, other_target, other_host):
        path.write_bytes(b"partial")
    assert stale_temporaries(target) == [dead]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, mine.name, other_target.name, other_host.name]
    )
