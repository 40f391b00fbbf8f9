"""Provenance: commit, versions and time of a run, without importing torch."""

from __future__ import annotations

import subprocess
import sys

from ifcn.provenance import file_sha256, git_commit, run_provenance


def test_commit_of_this_checkout_and_unknown_outside_git(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert git_commit().startswith(head.stdout.strip())
    assert git_commit(tmp_path) == "unknown"


def test_run_provenance_names_versions_and_time():
    record = run_provenance()
    assert {"python", "ifcn", "torch", "pycocotools", "h5py"} <= set(record["versions"])
    assert record["created"].endswith("+00:00")


def test_provenance_does_not_import_torch():
    code = "import sys, ifcn.provenance as p; p.run_provenance(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_file_sha256(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
