"""matplotlib's config folder for a user without a writable home (issue 23 item 21): no
/tmp/matplotlib-* left behind, no warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ifcn.mplconfig import matplotlib_config_dir
from ifcn.proposals.format import write_proposals
from tests.configs import ROOT

NOBODY = 65534


def _clean(monkeypatch, home: Path) -> None:
    for name in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_a_home_that_cannot_be_written_gets_a_temporary_folder_removed_after(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder: nothing can be made under it")
    _clean(monkeypatch, tmp_path / "file" / "home")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with matplotlib_config_dir() as folder:
        assert folder is not None and folder.is_dir() and folder.parent == tmp_path
        assert os.environ["MPLCONFIGDIR"] == str(folder)
    assert not folder.exists() and "MPLCONFIGDIR" not in os.environ


def test_a_writable_home_or_the_users_own_setting_is_left_alone(monkeypatch, tmp_path):
    _clean(monkeypatch, tmp_path / "home")  # not there yet, but it can be made
    with matplotlib_config_dir() as folder:
        assert folder is None and "MPLCONFIGDIR" not in os.environ
    monkeypatch.setenv("HOME", "/nonexistent-home")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mine"))
    with matplotlib_config_dir() as folder:
        assert folder is None and os.environ["MPLCONFIGDIR"] == str(tmp_path / "mine")


def _evaluation_inputs(folder: Path) -> tuple[Path, Path]:
    """One image, one object, two proposals: gt.json and proposals.h5."""
    mask = np.zeros((40, 50), np.uint8, order="F")
    mask[5:25, 10:30] = 1
    rle = mask_utils.encode(mask)
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400.0,
             "bbox": [10.0, 5.0, 20.0, 20.0],
             "segmentation": {"size": [40, 50], "counts": rle["counts"].decode()}}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    gt_path = folder / "gt.json"
    gt_path.write_text(json.dumps(gt))
    attrs = {"config": {}, "checkpoint_sha256": "0" * 64, "dataset": str(gt_path),
             "scales": [1], "k": 5, "m": 21}  # fmt: skip
    proposals = folder / "proposals.h5"
    corner = mask_utils.frPyObjects(np.array([[0.0, 0.0, 10.0, 10.0]]), 40, 50)[0]["counts"]
    record = {
        "image_id": 1, "file_name": "a.png", "height": 40, "width": 50,
        "scores": np.array([0.9, 0.5], np.float32),
        "boxes": np.array([[10, 5, 30, 25], [0, 0, 10, 10]], np.float32),
        "rles": [rle["counts"], corner], "scales": np.zeros(2, np.int8),
    }  # fmt: skip
    write_proposals(proposals, [record], attrs)
    return gt_path, proposals


@pytest.mark.slow
def test_evaluate_as_a_user_without_a_home_leaves_no_matplotlib_folder_and_no_warning(
    tmp_path, request
):
    """As `nobody` with HOME=/nonexistent (CAP_DAC_READ_SEARCH lets it read the root-owned
    virtualenv and inputs; it writes only where nobody may)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become another user")
    gt, proposals = _evaluation_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    # TMPDIR outside pytest's 0700 folder: access(2), which matplotlib asks, drops capabilities
    temporary = Path(tempfile.mkdtemp(prefix="ifcn-test-tmp-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(temporary, ignore_errors=True))
    for folder in (out, temporary):
        os.chown(folder, NOBODY, NOBODY)
    nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]  # fmt: skip
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    }
    env.update(HOME="/nonexistent", TMPDIR=str(temporary), PYTHONPATH=str(ROOT))

    # without ifcn's setting, matplotlib itself complains in this environment
    control = subprocess.run([*nobody, sys.executable, "-c", "import matplotlib.figure"],
                             env=env, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert "Matplotlib created a temporary" in control.stderr, control.stderr
    shutil.rmtree(temporary)
    temporary.mkdir()
    os.chown(temporary, NOBODY, NOBODY)

    done = subprocess.run(
        [*nobody, sys.executable, "-m", "ifcn", "evaluate", "--gt", str(gt), "--proposals",
         str(proposals), "--workers", "2", "--out", str(out / "ar.json")],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "matplotlib" not in done.stderr.lower() and "writable" not in done.stderr
    assert (out / "ar.json").exists() and list(out.glob("*.png"))
    assert list(temporary.iterdir()) == []
