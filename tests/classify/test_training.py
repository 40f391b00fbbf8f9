"""`ifcn classify train`: exact resume, and bad input stops it before any output."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import torch

from ifcn.classify.targets import label_rois
from ifcn.cli import main as cli_main
from ifcn.config import load_config
from ifcn.model import build_model
from ifcn.proposals.format import Proposals
from ifcn.training import checkpoint
from tests.classify.oracle import classify_config, write_oracle_proposals


def _train(config, data, out, *extra) -> list[str]:
    return [
        "classify", "train", "--config", str(config),
        "--proposals", str(data / "train_proposals.h5"), "--gt", str(data / "train.json"),
        "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path, oracle_data):
    config = classify_config(tmp_path, oracle_data, iters=6, checkpoint_period=3, log_period=1)
    straight = tmp_path / "straight"
    assert cli_main(_train(config, oracle_data, straight)) == 0
    # the run killed after its checkpoint at step 3: resume it from there
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    (resumed / "model_final.pt").unlink()
    checkpoint.checkpoint_path(resumed, 6).unlink()
    assert cli_main(_train(config, oracle_data, resumed, "--resume", "auto")) == 0
    final = [torch.load(run / "model_final.pt", weights_only=False) for run in (straight, resumed)]
    assert final[0]["kind"] == "ifcn-classifier" and final[0]["iteration"] == 6
    assert [c["name"] for c in final[0]["categories"]][:2] == ["ellipse", "rectangle"]
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key
    logs = [pd.read_csv(run / "classify_log.csv") for run in (straight, resumed)]
    assert list(logs[1]["iteration"]) == [1, 2, 3, 4, 5, 6]
    assert logs[0]["loss"].tolist() == logs[1]["loss"].tolist()


def _fails(capsys, args, names) -> str:
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(names) in err, err
    return err


def test_proposals_of_another_image_set_are_refused(tmp_path, oracle_data, capsys):
    config = classify_config(tmp_path, oracle_data, iters=2)
    out = tmp_path / "run"
    other = oracle_data / "val_proposals.h5"
    args = _train(config, oracle_data, out)
    args[args.index("--proposals") + 1] = str(other)
    err = _fails(capsys, args, other)
    assert "another image set" in err
    assert not out.exists()


def test_a_category_the_gt_does_not_list_is_refused(tmp_path, oracle_data, capsys):
    data = json.loads((oracle_data / "train.json").read_text())
    data["annotations"][3]["category_id"] = 42
    gt = tmp_path / "train.json"
    gt.write_text(json.dumps(data))
    config = classify_config(tmp_path, oracle_data, iters=2)
    out = tmp_path / "run"
    args = _train(config, oracle_data, out)
    args[args.index("--gt") + 1] = str(gt)
    args += ["--images", str(oracle_data / "images")]
    err = _fails(capsys, args, gt)
    assert "category_id 42" in err
    assert not out.exists()


def test_resuming_another_classifier_is_refused(tmp_path, oracle_data, classifier, capsys):
    config = classify_config(tmp_path, oracle_data, iters=4, fc_dim=64)
    out = tmp_path / "run"
    ckpt = checkpoint.list_checkpoints(classifier.parent)[0]
    err = _fails(capsys, _train(config, oracle_data, out, "--resume", str(ckpt)), ckpt)
    assert "classify.fc_dim=128, the config asks for 64" in err
    assert not (out / "model_final.pt").exists()


def test_resume_auto_under_other_settings_is_refused(tmp_path, oracle_data, classifier, capsys):
    out = tmp_path / "run"
    shutil.copytree(classifier.parent / "checkpoints", out / "checkpoints")
    ckpt = checkpoint.latest_checkpoint(out)
    config = classify_config(tmp_path, oracle_data, iters=4, checkpoint_period=2, lr=0.02)
    err = _fails(capsys, _train(config, oracle_data, out, "--resume", "auto"), ckpt)
    assert "classify.lr 0.01 -> 0.02" in err
    assert not (out / "model_final.pt").exists()
    # the same settings go on from it
    config = classify_config(tmp_path, oracle_data, iters=6, checkpoint_period=2)
    assert cli_main(_train(config, oracle_data, out, "--resume", str(ckpt))) == 0
    assert torch.load(out / "model_final.pt", weights_only=False)["iteration"] == 6


def test_resuming_a_final_model_or_a_proposal_model_is_refused(
    tmp_path, oracle_data, classifier, capsys
):
    config = classify_config(tmp_path, oracle_data, iters=4, checkpoint_period=2)
    out = tmp_path / "run"
    err = _fails(capsys, _train(config, oracle_data, out, "--resume", str(classifier)), classifier)
    assert "a final model (weights only), not a training checkpoint" in err
    proposer = checkpoint.save_atomic(
        {"model": build_model({"head_channels": 8}).state_dict(), "config": load_config(config),
         "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {}, "iteration": 2},
        tmp_path / "model_0000002.pt",
    )  # fmt: skip
    err = _fails(capsys, _train(config, oracle_data, out, "--resume", str(proposer)), proposer)
    assert "a proposal model of `ifcn train`, not a classifier of `ifcn classify train`" in err
    assert not out.exists()


def test_bad_out_and_workers_are_one_line(tmp_path, oracle_data, capsys):
    config = classify_config(tmp_path, oracle_data, iters=2)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    err = _fails(capsys, _train(config, oracle_data, taken), taken)
    assert "--out is an existing file, not a folder" in err and taken.read_text() == "mine"
    out = tmp_path / "run"
    assert cli_main(_train(config, oracle_data, out, "--workers", "-1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ifcn classify train: error: --workers: -1 is less than the minimum of 0"]
    assert not out.exists()


def test_oracle_proposals_cover_every_gt_instance(tmp_path, oracle_data):
    # the oracle file itself: every GT has near copies and background among the proposals
    data = json.loads((oracle_data / "val.json").read_text())
    path = write_oracle_proposals(oracle_data / "val.json", tmp_path / "p.h5", seed=1)
    with Proposals(path) as proposals:
        for image in data["images"]:
            anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            labels = label_rois(
                proposals.rles(image["id"]),
                [a["segmentation"] for a in anns],
                [a["category_id"] for a in anns],
            )
            assert (labels > 0).sum() >= 2 * len(anns) and (labels == 0).any()


def test_init_from_takes_the_backbone_of_the_proposal_model(tmp_path, oracle_data):
    config = classify_config(tmp_path, oracle_data, iters=1, lr=1e-12, warmup_iters=0)
    proposer = build_model({"head_channels": 8})
    init = checkpoint.save_atomic(
        {"model": proposer.state_dict(), "config": load_config(config)}, tmp_path / "m.pt"
    )
    out = tmp_path / "run"
    assert cli_main(_train(config, oracle_data, out, "--init-from", str(init))) == 0
    trained = torch.load(out / "model_final.pt", weights_only=False)["model"]
    for key, value in proposer.backbone.state_dict().items():
        assert torch.allclose(trained[f"backbone.{key}"], value, atol=1e-9), key
