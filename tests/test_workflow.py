"""The Snakemake workflow: plans for every shipped config, runs end to end on the tiny one,
reruns only what a change touches, and rejects an invalid config before any job starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=_env(), capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def planned_jobs(output: str) -> dict[str, int]:
    """Job counts of a dry run's 'Job stats' table."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {name: int(count) for name, count in rows if name != "total"}


@pytest.mark.parametrize(
    "configfile,first_rules",
    [
        ("config/config.yaml", {"synth"}),
        ("config/voc2012.yaml", {"download", "convert_train", "convert_val"}),
        ("config/coco.yaml", {"download", "convert_train", "convert_val"}),
        ("config/pennfudan.yaml", {"download", "convert_train", "convert_val"}),
        ("config/borrat.yaml", {"convert_train", "convert_val"}),
    ],
)
def test_dry_run_plans_the_whole_pipeline(tmp_path, configfile, first_rules):
    config = yaml.safe_load((ROOT / configfile).read_text())
    if config["data"].get("source"):  # relative to the checkout; the run happens elsewhere
        source = (ROOT / config["data"]["source"]).resolve()
        if not source.is_dir():
            pytest.skip(f"{source} is not here")
        config["data"]["source"] = str(source)
        configfile = tmp_path / "run.yaml"
        configfile.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(result.stdout)
    assert first_rules <= jobs.keys()
    assert {"train", "infer", "merge", "nms", "evaluate", "report", "all"} <= jobs.keys()


def test_slurm_profile_plans_without_a_cluster(tmp_path):
    result = snakemake(
        "-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/coco.yaml",
        "--directory", str(tmp_path),
    )  # fmt: skip
    assert "torchrun --standalone --nproc-per-node 8 -m ifcn train" in result.stdout


def _workdir(tmp_path: Path, **sections) -> Path:
    """A copy of the workflow with config/tiny.yaml (plus ``sections``) as its run config."""
    work = tmp_path / "work"
    work.mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", work)
    shutil.copy(ROOT / "environment.yml", work)
    shutil.copytree(ROOT / "workflow", work / "workflow")
    shutil.copytree(ROOT / "config", work / "config")
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    return work


def test_invalid_config_fails_before_any_job(tmp_path):
    work = _workdir(tmp_path, train={"iterz": 5})
    result = snakemake("--cores", "1", "--configfile", "run.yaml", cwd=work, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "iterz" in message and "Additional properties" in message
    assert not (work / "resources").exists() and not (work / "results").exists()
    work2 = _workdir(tmp_path / "b", model={"k": "five"})
    result = snakemake("-n", "--configfile", "run.yaml", cwd=work2, check=False)
    assert result.returncode != 0
    assert "'five' is not of type 'integer'" in result.stdout + result.stderr


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_nms_change_reruns_only_downstream(tmp_path):
    work = _workdir(tmp_path)
    snakemake("--cores", "2", "--configfile", "run.yaml", cwd=work)
    ar = json.loads((work / "results/tiny/val/ar.json").read_text())
    for n in ("10", "100"):
        assert 0.0 <= ar[f"AR@{n}"] <= 1.0
    assert ar["AR@10"] <= ar["AR@100"] and ar["num_images"] == 3
    report = (work / "results/tiny/report.md").read_text()
    assert "AR@100" in report and "mAP@0.5" in report
    segm = json.loads((work / "results/tiny/val/segm_eval.json").read_text())
    assert 0.0 <= segm["mAP@0.5"] <= 1.0 and 0.0 <= segm["mAP@0.7"] <= segm["mAP@0.5"]
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (work / "results/tiny" / link).exists(), link
    # a second run has nothing to do
    again = snakemake("-n", "--configfile", "run.yaml", cwd=work)
    assert "Nothing to be done" in again.stdout + again.stderr
    # a new NMS threshold reruns nms -> evaluate -> report only
    config = yaml.safe_load((work / "run.yaml").read_text())
    config["nms"]["iou"] = 0.7
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    changed = planned_jobs(snakemake("-n", "--configfile", "run.yaml", cwd=work).stdout)
    # the network neither retrains nor runs again; everything downstream of the proposals does
    # (the classifier is trained on the training split's proposals)
    assert changed == {
        "nms": 2, "evaluate": 1, "classify_train": 1, "classify_predict": 1,
        "classify_evaluate": 1, "report": 1, "all": 1,
    }  # fmt: skip
    # a classifier setting reruns the classifier and the report only
    config["classify"]["nms_iou"] = 0.4
    config["nms"]["iou"] = 0.8
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    changed = planned_jobs(snakemake("-n", "--configfile", "run.yaml", cwd=work).stdout)
    assert changed == {"classify_predict": 1, "classify_evaluate": 1, "report": 1, "all": 1}
