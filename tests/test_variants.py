"""The ablation variants (paper Tables 1 and 2): their configs, their table, their workflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ifcn.commands import ablation
from ifcn.commands.ablation import parse_setting
from ifcn.config import load_config, set_keys, validate_config
from ifcn.errors import IfcnError
from ifcn.reporting.ablation import ablation_table
from ifcn.variants import (
    HEAD_VARIANTS,
    K_VARIANTS,
    VARIANTS,
    apply_overrides,
    plan_ablations,
    variant_config,
)

ROOT = Path(__file__).resolve().parents[1]


def write_ar(path: Path, values: tuple[float, float, float]) -> Path:
    """An ar.json as `ifcn evaluate` writes it, reduced to what the table and plot read."""
    thresholds = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    ar = {f"AR@{n}": v for n, v in zip((10, 100, 1000), values, strict=True)}
    ar |= {
        "matching": "coco",
        "iou_thresholds": thresholds,
        "recall": {
            str(n): [max(0.0, v * 2 - (t - 0.5) * 2) for t in thresholds]
            for n, v in zip((10, 100, 1000), values, strict=True)
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ar))
    return path


def _run(argv: list[str]) -> int:
    args = ablation.get_args_parser().parse_args(argv)
    return ablation.main(args)


def test_the_variants_are_the_papers():
    assert list(K_VARIANTS) == ["k=1", "k=3", "k=5", "k=7"]
    assert list(HEAD_VARIANTS) == [
        "instancefcn-full",
        "instancefcn-crop",
        "deepmask-crop",
        "deepmask-full",
    ]


def test_a_variant_config_overrides_only_its_keys():
    base = validate_config({"run": "synthetic", "model": {"k": 5, "head_channels": 128}})
    k1 = variant_config(base, "k=1")
    assert k1["model"]["k"] == 1 and k1["model"]["head"] == "instancefcn"
    assert k1["train"]["crop"] is None and k1["run"] == "synthetic"
    assert k1["model"]["head_channels"] == 128 and k1["infer"] == base["infer"]
    crop = variant_config(base, "deepmask-crop")
    assert crop["model"]["head"] == "deepmask" and crop["train"]["crop"] == 224
    assert crop["model"]["k"] == 5
    assert variant_config(base, "instancefcn-full") == variant_config(base, "k=5") == base
    with pytest.raises(IfcnError, match="unknown ablation variant"):
        variant_config(base, "k=9")


def test_variants_equal_to_the_run_reuse_its_ar_and_the_others_train_in_their_folders():
    base = validate_config({"run": "mine"})  # k=5, instancefcn, full images
    plan = plan_ablations(base, "results/mine")
    trained = ["k=1", "k=3", "k=7", "instancefcn-crop", "deepmask-crop", "deepmask-full"]
    assert list(plan.folders) == ["results/mine"] + [f"results/mine/ablation/{v}" for v in trained]
    assert plan.folders["results/mine"] is base
    for variant in VARIANTS:
        home = "results/mine" if variant in ("k=5", "instancefcn-full") else None
        home = home or f"results/mine/ablation/{variant}"
        assert plan.ar_files[variant] == f"{home}/val/ar.json"
        assert plan.folders[home] == variant_config(base, variant)


def test_variants_equal_to_each_other_share_the_first_ones_folder():
    # a run on crops with k = 3: k=3 differs from it (full images), instancefcn-crop does not
    base = validate_config({"run": "mine", "model": {"k": 3}, "train": {"crop": 224}})
    plan = plan_ablations(base, "results/mine")
    assert plan.ar_files["instancefcn-crop"] == "results/mine/val/ar.json"
    # k=3 (k 3, full images) and instancefcn-full (the run's k 3, full images) are one model
    assert plan.ar_files["k=3"] == plan.ar_files["instancefcn-full"]
    assert plan.ar_files["k=3"] == "results/mine/ablation/k=3/val/ar.json"
    assert "results/mine/ablation/instancefcn-full" not in plan.folders
    # settings outside what decides the AR (the classifier's) do not split folders
    other = plan_ablations(set_keys(base, {"classify.iters": 7}), "results/mine")
    assert other.ar_files == plan.ar_files


def test_overrides_are_validated():
    base = validate_config({})
    with pytest.raises(IfcnError, match="'kk' was unexpected"):
        apply_overrides(base, {"model.kk": 3})
    with pytest.raises(IfcnError, match="'five' is not of type 'integer'"):
        apply_overrides(base, {"model.k": "five"})
    assert parse_setting("train.crop=null") == ("train.crop", None)
    assert parse_setting("model.k=3") == ("model.k", 3)
    assert parse_setting("model.head=deepmask") == ("model.head", "deepmask")
    with pytest.raises(IfcnError, match="section.key=value"):
        parse_setting("k=3")


def test_cli_config_writes_a_loadable_config(tmp_path, capsys):
    source = tmp_path / "run.yaml"
    source.write_text(yaml.safe_dump({"run": "mine", "model": {"head_channels": 16}}))
    out = tmp_path / "ablation" / "k=1" / "config.yaml"
    assert _run(["config", "--config", str(source), "--set", "model.k=1",
                 "--set", "train.crop=null", "--out", str(out)]) == 0  # fmt: skip
    written = load_config(out)
    assert written["run"] == "mine" and written["model"]["k"] == 1
    assert written["model"]["head_channels"] == 16 and written["train"]["crop"] is None
    assert out.read_text().startswith("# ")
    assert not [p for p in out.parent.iterdir() if p.name != "config.yaml"]  # no temporaries
    named = tmp_path / "named.yaml"
    assert _run(["config", "--config", str(source), "--variant", "deepmask-crop",
                 "--out", str(named)]) == 0  # fmt: skip
    assert load_config(named)["model"]["head"] == "deepmask"


def test_table_gathers_the_variants_ar_as_fractions(tmp_path):
    files = [
        write_ar(tmp_path / f"{name}.json", values)
        for name, values in [("a", (0.1, 0.3, 0.4)), ("b", (0.2, 0.35, 0.5))]
    ]
    frame = ablation_table(files, ["k=1", "k=5"])
    assert list(frame.columns) == ["variant", "AR@10", "AR@100", "AR@1000"]
    assert frame["variant"].tolist() == ["k=1", "k=5"]
    assert frame["AR@100"].tolist() == [0.3, 0.35]
    with pytest.raises(IfcnError, match="2 ar.json"):
        ablation_table(files, ["k=1"])


def test_cli_table_writes_the_csv_and_the_plot(tmp_path, capsys):
    files = [write_ar(tmp_path / f"{i}.json", (0.1 * i, 0.2 * i, 0.25 * i)) for i in (1, 2)]
    out, plot = tmp_path / "ablation_k.csv", tmp_path / "ablation_k.png"
    assert _run(["table", "--ar", *map(str, files), "--variants", "k=1", "k=3",
                 "--plot", str(plot), "--out", str(out)]) == 0  # fmt: skip
    frame = pd.read_csv(out)
    assert frame.to_dict("records")[1] == {
        "variant": "k=3",
        "AR@10": 0.2,
        "AR@100": 0.4,
        "AR@1000": 0.5,
    }
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_refuses_a_file_that_is_not_an_ar_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(IfcnError, match="no AR@N"):
        ablation_table([bad], ["k=1"])


def test_workflow_runs_the_variants_through_the_stage_rules_and_reuses_the_main_run(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [str(bin_dir / "snakemake"), "-n", "ablation_k", "ablation_head",
         "--configfile", str(ROOT / "config" / "config.yaml"), "--directory", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("Job stats:")[1].split("\n\n")[0]
    jobs = {row.split()[0]: int(row.split()[1]) for row in table.splitlines()[3:] if row.strip()}
    # six variant trainings beside the run's own, by the same rules; no copied ablation_* rules
    assert jobs["train"] == jobs["nms"] == jobs["evaluate"] == 7
    assert jobs["ablation_k"] == jobs["ablation_head"] == 1
    assert not {name for name in jobs if name.startswith("ablation_")} - {
        "ablation_k",
        "ablation_head",
    }
    # the outputs the copied rules planned (recorded before the change), variant by variant
    planned = set(re.findall(r"results/synthetic/[^\s,]+", result.stdout))
    variants = ("k=1", "k=3", "k=7", "instancefcn-crop", "deepmask-crop", "deepmask-full")
    for variant in variants:
        folder = f"results/synthetic/ablation/{variant}"
        expected = ["train/model_final.pt", "val/candidates.h5", "val/proposals.h5",
                    "val/ar.json", "val/ar.recall_iou.csv", "val/ar.recall_iou.png"]  # fmt: skip
        assert {f"{folder}/{path}" for path in expected} <= planned, variant
        written = load_config(tmp_path / folder / "config.yaml")  # each folder's own config
        assert written == variant_config(load_config(ROOT / "config" / "config.yaml"), variant)
    assert "results/synthetic/val/ar.json" in planned  # k=5 and instancefcn-full reuse it
    assert "ablation/k=5/" not in result.stdout
    assert "ablation/instancefcn-full/" not in result.stdout
