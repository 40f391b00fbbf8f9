"""report.md: written from the run's own files only; the paper's figures in their own section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from ifcn import cli
from ifcn.config import validate_config
from ifcn.errors import IfcnError
from ifcn.reporting import report
from ifcn.reporting.report import build_report, mask_layer_parameters
from ifcn.reporting.summaries import Picture, write_figures_index


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 128, np.uint8))
    return path


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


AR = {
    "AR@10": 0.2346,
    "AR@100": 0.4567,
    "AR@1000": 0.5012,
    "matching": "coco",
    "by_area": {"small": {"10": None, "100": 0.1, "1000": 0.2}},
    "num_images": 12,
    "num_gt": {"all": 40},
}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """results/<run>/ with a fabricated ar.json, its plot, a training log, the two ablation
    tables, segm_eval.json and two indexed pictures."""
    run = tmp_path / "results" / "demo"
    (run / "val").mkdir(parents=True)
    (run / "val" / "ar.json").write_text(json.dumps(AR))
    _png(run / "val" / "ar.recall_iou.png")
    pd.DataFrame(
        {"variant": ["k=1", "k=5"], "AR@10": [0.111, 0.222], "AR@100": [0.3, 0.4],
         "AR@1000": [0.35, 0.45]}
    ).to_csv(run / "ablation_k.csv", index=False)  # fmt: skip
    _png(run / "ablation_k.png")
    pd.DataFrame(
        {"variant": ["instancefcn-full", "deepmask-full"], "AR@10": [0.25, 0.15],
         "AR@100": [0.41, 0.31], "AR@1000": [0.5, 0.4]}
    ).to_csv(run / "ablation_head.csv", index=False)  # fmt: skip
    segm = {
        "mAP@0.5": 0.5,
        "mAP@0.7": 0.25,
        "num_images": 12,
        "per_category": [{"category_id": 1, "name": "ellipse", "AP@0.5": 0.5, "AP@0.7": None}],
    }
    (run / "val" / "segm_eval.json").write_text(json.dumps(segm))
    (run / "train").mkdir()
    (run / "train" / "train_log.csv").write_text(
        "iteration,loss,loss_objectness,loss_mask,lr\n10,0.9,0.5,0.4,0.01\n20,0.7,0.4,0.3,0.01\n"
    )
    pictures = [
        Picture(_png(run / "figures" / "proposals-1.png"), "Image 5: Fig. 8", "proposals", 5),
        Picture(_png(run / "figures" / "score_maps-1.png"), "Image 5: Fig. 5", "score_maps", 5),
    ]
    write_figures_index(pictures, run / "figures" / "figures.json")
    return run


def _config(**model) -> dict:
    return validate_config({"run": "demo", "model": {"head_channels": 16, **model}})


def _report(run: Path, config: dict | None = None, **files) -> str:
    return build_report(config or _config(), run / "val" / "ar.json", run / "report.md", **files)


def test_report_shows_the_runs_figures_and_the_paper_apart(run_dir):
    text = _report(
        run_dir,
        segm_eval=run_dir / "val" / "segm_eval.json",
        ablation_k=run_dir / "ablation_k.csv",
        ablation_head=run_dir / "ablation_head.csv",
        figures=run_dir / "figures" / "figures.json",
    )
    ours, published = text.split("## Published figures (InstanceFCN, ECCV 2016)")
    assert "| all | 23.5 | 45.7 | 50.1 |" in ours  # from ar.json, in percent
    assert "on 12 images, 40 objects" in ours
    assert "| small | – | 10.0 | 20.0 |" in ours
    assert "| k=1 | 11.1 | 30.0 | 35.0 | model.k=1," in ours
    assert "| k=5 | 22.2 | 40.0 | 45.0 | model.k=5," in ours
    assert "| deepmask-full | 15.0 | 31.0 | 40.0 | model.head=deepmask" in ours
    assert "| all (mAP) | 50.0 | 25.0 |" in ours and "| ellipse | 50.0 | – |" in ours
    for number in ("38.9", "49.7", "61.5", "53M"):  # published figures only in their section
        assert number not in ours and number in published
    assert "| k=5 | 38.9 | 49.7 | 52.6 |" in published
    assert ours.index("## Provenance") > ours.index("## Pictures")
    links = _links(text)
    assert links == [
        "val/ar.recall_iou.png",
        "ablation_k.png",
        "figures/proposals-1.png",
        "figures/score_maps-1.png",
    ]
    assert "Image 5: Fig. 8" in ours
    for link in links:
        assert (run_dir / link).exists(), link


def test_report_without_ablations_has_no_ablation_section(run_dir):
    text = _report(run_dir)
    assert "Ablation:" not in text and "## Mask-prediction parameters" in text


def test_report_names_a_missing_table(run_dir):
    with pytest.raises(IfcnError, match="nothing.csv: file not found"):
        _report(run_dir, ablation_k="nothing.csv")


def test_report_says_which_head_ran_and_how_deepmask_scored(run_dir):
    assert "head `instancefcn`" in _report(run_dir)
    config = _config(head="deepmask")
    text = _report(run_dir, config)
    assert "head `deepmask` (~DeepMask; objectness scored by its `fc` branch" in text
    config["model"]["deepmask_scoring"] = "conv"  # InstanceFCN's conv branch instead
    text = "\n".join(report._describe_run(config))
    assert "scored by its `conv` branch, model.deepmask_scoring" in text


def test_report_says_how_the_loss_terms_were_weighed(run_dir):
    """Eq. (1) is a plain sum; the default averages each term and adds them 1:1."""
    text = _report(run_dir)
    assert "each averaged" in text and "train.loss_reduction: mean" in text
    assert "the paper writes a plain sum" in text
    config = validate_config({"run": "demo", "train": {"loss_reduction": "sum"}})
    text = _report(run_dir, config)
    assert "eq. (1) literally" in text and "train.loss_reduction: sum" in text
    assert "each averaged" not in text


def test_cli_report_draws_the_loss_curve_and_writes_the_tables(run_dir, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"run": "demo", "model": {"head_channels": 8}}))
    out = run_dir / "report.md"
    argv = [
        "report", "--config", str(config), "--ar", str(run_dir / "val" / "ar.json"),
        "--segm-eval", str(run_dir / "val" / "segm_eval.json"),
        "--train-log", str(run_dir / "train" / "train_log.csv"),
        "--loss-plot", str(run_dir / "train" / "loss.png"),
        "--ar-table", str(run_dir / "tables" / "proposals_ar.csv"),
        "--map-table", str(run_dir / "tables" / "segmentation_map.csv"),
        "--figures", str(run_dir / "figures" / "figures.json"), "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    text = out.read_text()
    assert "## Training" in text and "up to iteration 20; last logged loss 0.7" in text
    assert "train/loss.png" in _links(text)
    assert cv2.imread(str(run_dir / "train" / "loss.png")).shape[2] == 3
    table = pd.read_csv(run_dir / "tables" / "proposals_ar.csv")
    assert list(table.columns) == ["objects", "AR@10 (%)", "AR@100 (%)", "AR@1000 (%)"]
    assert table.loc[0].tolist()[:3] == ["all", 23.5, 45.7]
    segm = pd.read_csv(run_dir / "tables" / "segmentation_map.csv")
    assert segm["AP@0.5 (%)"].tolist() == [50.0, 50.0]
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a UTF-8 text file"),
        (json.dumps({**AR, "AR@100": "0.45"}).encode(), "at 'AR@100': '0.45' is not of type"),
        (json.dumps({**AR, "AR@10": 1.5}).encode(), "at 'AR@10': 1.5 is greater than"),
        (b'{"AR@10": NaN}', "NaN is not a number JSON allows"),
        (json.dumps({"images": []}).encode(), "no AR@N figures"),
        (json.dumps({**AR, "num_gt": "many"}).encode(), "at 'num_gt'"),
    ],
)
def test_cli_report_refuses_a_bad_ar_json_in_one_line(tmp_path, capsys, content, problem):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"run": "demo"}))
    ar = tmp_path / "ar.json"
    ar.write_bytes(content)
    out = tmp_path / "report.md"
    argv = ["report", "--config", str(config), "--ar", str(ar), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ifcn report: error: {ar}: ")
    assert problem in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "ar.json",
        "config.yaml",
    ]


def test_cli_report_refuses_a_bad_segm_eval_and_a_bad_index(run_dir, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"run": "demo"}))
    base = ["report", "--config", str(config), "--ar", str(run_dir / "val" / "ar.json")]
    segm = tmp_path / "segm_eval.json"
    segm.write_text(json.dumps({"mAP@0.5": "high", "mAP@0.7": 0.2}))
    out = tmp_path / "report.md"
    assert cli.main([*base, "--segm-eval", str(segm), "--out", str(out)]) == 2
    assert "at 'mAP@0.5': 'high' is not of type" in capsys.readouterr().err
    (run_dir / "figures" / "score_maps-1.png").unlink()
    index = run_dir / "figures" / "figures.json"
    assert cli.main([*base, "--figures", str(index), "--out", str(out)]) == 2
    assert f"{index}: lists score_maps-1.png, which is not there" in capsys.readouterr().err
    assert not out.exists()


def test_mask_parameters_are_counted_on_the_built_modules():
    rows = mask_layer_parameters(_config(k=3, head_channels=128)["model"])
    counts = {(r["setting"], r["head"]): (r["weights"], r["biases"]) for r in rows}
    ours, theirs = (
        counts[("paper setting, 512 channels", "InstanceFCN (k = 5)")],
        counts[("paper setting, 512 channels", "~DeepMask")],
    )
    assert sum(ours) == 512 * 3 * 3 * 25 + 25  # the paper's 0.1M
    assert theirs[0] == 512 * 14 * 14 * 512 + 512 * 56**2  # the paper's 53M
    assert theirs[1] == 512 + 56**2
    assert counts[("this run, 128 channels", "InstanceFCN (k = 3)")] == (128 * 3 * 3 * 9, 9)
    assert counts[("this run, 128 channels", "~DeepMask")][0] == 128 * 14 * 14 * 128 + 128 * 56**2


def test_report_prints_the_counted_parameters(run_dir):
    text = _report(run_dir)
    assert f"{512 * 14 * 14 * 512 + 512 * 56**2:,}" in text
    assert f"{512 * 3 * 3 * 25:,}" in text
    assert "Mask-prediction parameters (§4): ~DeepMask fc layers 53M" in text


def test_report_states_provenance_input_hashes_and_stage_times(run_dir):
    digest = "ab" * 32
    ar = {**AR, "inputs": {"resources/demo/val.json": digest}}
    (run_dir / "val" / "ar.json").write_text(json.dumps(ar))
    times = run_dir / "benchmarks"
    times.mkdir()
    header = "s\th:m:s\tmax_rss\n"
    (times / "train.tsv").write_text(header + "240.5\t0:04:00\t900\n")
    (times / "nms_val.tsv").write_text(header + "30.0\t0:00:30\t400\n")
    text = _report(run_dir, benchmarks=times)
    section = text[text.index("## Provenance") :]
    assert "at commit `" in section and "torch " in section
    assert f"`{digest}`" in section and "resources/demo/val.json" in section
    assert "4.5 min of jobs (2 jobs" in section
    assert section.index("`train`") < section.index("`nms_val`")  # longest first


def test_report_refuses_a_benchmark_file_without_seconds(run_dir):
    times = run_dir / "benchmarks"
    times.mkdir()
    (times / "train.tsv").write_text("s\th:m:s\nnan\t0:00:00\n")
    with pytest.raises(IfcnError, match="finite seconds"):
        _report(run_dir, benchmarks=times)
