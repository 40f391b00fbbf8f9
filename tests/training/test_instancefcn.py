"""`ifcn train`: it learns, it resumes exactly, and bad input stops it before any output."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ifcn.cli import main as cli_main
from ifcn.config import load_config
from ifcn.training import checkpoint
from ifcn.training.instancefcn import run_training


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_training_lowers_both_losses(tmp_path, tiny_data, make_config):
    # one image seen at one scale: the network must fit it, and both terms of eq. (1) fall
    subset = json.loads((tiny_data / "train.json").read_text())
    first = subset["images"][0]
    subset["images"] = [first]
    subset["annotations"] = [a for a in subset["annotations"] if a["image_id"] == first["id"]]
    (tmp_path / "one.json").write_text(json.dumps(subset))
    config = load_config(
        make_config(
            tmp_path,
            tiny_data,
            model={"head_channels": 64},
            train={
                "iters": 60,
                "lr": 0.01,
                "scales": [256],
                "flip": False,
                "log_period": 10,
                "checkpoint_period": 60,
                "canonical": 64.0,
                "tensorboard": True,
            },
        )
    )
    config["data"]["train_json"] = str(tmp_path / "one.json")
    run_training(config, tmp_path / "run", show_progress=False)
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log["iteration"]) == [10, 20, 30, 40, 50, 60]
    assert (log["num_pos"] > 0).all()
    for column in ("loss_objectness", "loss_mask"):
        assert log[column].iloc[-2:].mean() < 0.7 * log[column].iloc[:2].mean(), column
    # train.tensorboard: the same rows as TensorBoard scalars beside the log
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(log.columns) - {"iteration"}
    for column in ("loss", "num_pos", "lr"):
        scalars = events.Scalars(column)
        assert [s.step for s in scalars] == log["iteration"].tolist()
        assert [s.value for s in scalars] == pytest.approx(log[column].tolist(), rel=1e-5)


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path, tiny_config):
    straight = tmp_path / "straight"
    assert cli_main(["train", "--config", str(tiny_config), "--out", str(straight)]) == 0
    # the same run stopped after iteration 3: keep only that checkpoint, resume from it
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    (resumed / "model_final.pt").unlink()
    (resumed / "checkpoints" / "model_0000006.pt").unlink()
    ckpt = resumed / "checkpoints" / "model_0000003.pt"
    assert checkpoint.latest_checkpoint(resumed) == ckpt
    assert (
        cli_main(
            ["train", "--config", str(tiny_config), "--out", str(resumed), "--resume", str(ckpt)]
        )
        == 0
    )
    a, b = _weights(straight / "model_final.pt"), _weights(resumed / "model_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the log keeps the rows up to the checkpoint and logs the same iterations after it
    log_a = pd.read_csv(straight / "train_log.csv")
    log_b = pd.read_csv(resumed / "train_log.csv")
    assert list(log_b["iteration"]) == list(log_a["iteration"]) == [2, 4, 6]
    assert log_b.iloc[0].equals(log_a.iloc[0])


def test_checkpoint_holds_everything_to_continue(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(tiny_config), "--out", str(out)]) == 0
    state = checkpoint.load(out / "checkpoints" / "model_0000003.pt")
    assert state["iteration"] == 3
    assert {"model", "optimizer", "lr_scheduler", "config", "rng"} <= state.keys()
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9
    final = torch.load(out / "model_final.pt", weights_only=False)
    assert final["iteration"] == 6 and final["config"]["model"]["k"] == 5


def test_resume_from_another_architecture_is_refused(tmp_path, tiny_data, make_config):
    out = tmp_path / "run"
    k5 = make_config(tmp_path, tiny_data)
    assert cli_main(["train", "--config", str(k5), "--out", str(out)]) == 0
    other = tmp_path / "k3"
    other.mkdir()
    k3 = make_config(other, tiny_data, model={"k": 3})
    ckpt = out / "checkpoints" / "model_0000006.pt"
    assert (
        cli_main(
            ["train", "--config", str(k3), "--out", str(tmp_path / "x"), "--resume", str(ckpt)]
        )
        == 2
    )


def _break(data_root, tmp_path, how):
    broken = tmp_path / "broken"
    shutil.copytree(data_root, broken)
    spec = json.loads((broken / "train.json").read_text())
    if how == "missing image":
        (broken / "images" / spec["images"][0]["file_name"]).unlink()
    elif how == "undecodable image":
        (broken / "images" / spec["images"][1]["file_name"]).write_bytes(b"not a png at all")
    elif how == "annotation without segmentation":
        del spec["annotations"][0]["segmentation"]
    elif how == "empty image list":
        spec["images"], spec["annotations"] = [], []
    elif how == "no annotation":
        spec["annotations"] = []
    elif how == "only crowd regions":
        for ann in spec["annotations"]:
            ann["iscrowd"] = 1
    (broken / "train.json").write_text(json.dumps(spec))
    return broken


@pytest.mark.parametrize(
    "how",
    [
        "missing image",
        "undecodable image",
        "annotation without segmentation",
        "empty image list",
        "no annotation",
        "only crowd regions",
    ],
)
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, tiny_data, make_config, capsys, how):
    broken = _break(tiny_data, tmp_path, how)
    config = make_config(tmp_path, broken)
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0], err
    assert not out.exists()


def test_instances_never_of_a_positive_size_are_refused(tmp_path, tiny_data, make_config, capsys):
    # the right data at scales where every object is far smaller than a window's canonical size
    config = make_config(tmp_path, tiny_data, train={"scales": [16]})
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tiny_data / "train.json") in err[0], err
    assert "can make a positive window" in err[0] and "train.scales or train.canonical" in err[0]
    assert not out.exists()
