"""Config files: validated against the workflow's schema, defaults filled, errors on one line."""

import os
from pathlib import Path

import pytest
import yaml

from ifcn.cli import main as cli_main
from ifcn.config import (
    coerce_overrides,
    load_config,
    run_config,
    schema_markdown,
    validate_config,
    write_config,
)
from ifcn.errors import IfcnError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_configs_validate(name):
    config = load_config(ROOT / "config" / name)
    assert config["model"]["m"] >= 1 and config["train"]["iters"] >= 1


def test_defaults_are_the_papers_settings(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    config = load_config(path)
    assert config["model"] | {"weights": None} == {
        "backbone": "tiny",
        "pretrained": False,
        "weights": None,
        "head": "instancefcn",
        "deepmask_scoring": "fc",
        "k": 5,
        "m": 21,
        "head_channels": 512,
    }
    train = config["train"]
    assert (train["iters"], train["lr"], train["lr_step"], train["momentum"]) == (
        40000,
        1e-3,
        0.8,
        0.9,
    )
    assert train["weight_decay"] == 5e-4 and train["windows_per_image"] == 256
    assert train["scales"] == [round(600 * 1.5**e) for e in range(-4, 2)]
    assert config["nms"]["iou"] == 0.8 and config["nms"]["top_n"] == 1000


def _write(tmp_path, data):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_is_one_line_naming_the_file(tmp_path):
    path = _write(tmp_path, {"train": {"iterz": 3}})
    with pytest.raises(IfcnError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "iterz" in message and "\n" not in message


def test_wrong_type_is_one_line_naming_the_key(tmp_path):
    path = _write(tmp_path, {"model": {"k": "five"}})
    with pytest.raises(IfcnError, match=r"model\.k.*not of type 'integer'") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_cli_exits_non_zero_with_one_line_and_writes_nothing(tmp_path, capsys):
    path = _write(tmp_path, {"train": {"iters": -1}})
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "train.iters" in err
    assert not out.exists()


def test_config_readme_is_generated_from_the_schema():
    assert (ROOT / "config" / "README.md").read_text() == schema_markdown()


@pytest.mark.parametrize(
    "data,expected",
    [
        ({"dataset": "synthetic"}, ("resources/mine", "resources/mine/train.json",
                                    "resources/mine/images", "resources/mine/val.json")),
        ({"dataset": "coco", "source": "exports/cats", "val_split": "valid"},
         ("resources/mine", "resources/mine/train.json", "exports/cats/train",
          "resources/mine/valid.json")),
        ({"dataset": "coco2014", "root": "/data/coco"},
         ("/data/coco", "/data/coco/train2014.json", "/data/coco/train2014",
          "/data/coco/val2014.json")),
        ({"dataset": "pennfudan"}, ("resources/mine", "resources/mine/train.json",
                                    "resources/mine/PennFudanPed/PNGImages",
                                    "resources/mine/val.json")),
        ({"dataset": "synthetic", "train_json": "elsewhere/t.json"},
         ("resources/mine", "elsewhere/t.json", "resources/mine/images",
          "resources/mine/val.json")),
    ],
)  # fmt: skip
def test_data_paths_derive_from_the_run_unless_given(data, expected):
    config = validate_config({"run": "mine", "data": data})["data"]
    assert (config["root"], config["train_json"], config["train_images"], config["val_json"]) == (
        expected
    )


def test_a_dataset_requires_what_it_needs_naming_the_key(tmp_path):
    path = _write(tmp_path, {"run": "mine", "data": {"dataset": "coco"}})
    with pytest.raises(IfcnError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid config at 'data.source': dataset 'coco' needs")
    assert "\n" not in message


def test_command_line_overrides_take_the_schemas_types():
    # what Snakemake's --config hands over: nested values as strings, numbers for plain ones
    overrides = {"run": 2024, "report": {"ablations": "true"}, "nms": "{iou: 0.7, top_n: 50}"}
    assert coerce_overrides(overrides) == {
        "run": "2024",
        "report": {"ablations": True},
        "nms": {"iou": 0.7, "top_n": 50},
    }


def test_run_config_lays_files_and_overrides_over_each_other(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"run": "a", "nms": {"iou": 0.6, "top_n": 10}}))
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"nms": {"top_n": 20}, "model": {"k": 3}}))
    config = run_config([base, extra], {"run": "b", "model": {"k": "7"}})
    assert config["run"] == "b" and config["model"]["k"] == 7
    assert config["nms"] == {"iou": 0.6, "top_n": 20, "mask_threshold": 0.5}
    assert config["data"]["root"] == "resources/b"
    with pytest.raises(IfcnError) as info:
        run_config([base, extra], {"model": {"kk": 1}})
    message = str(info.value)
    assert (
        message.startswith(f"{base} + {extra} with --config") and "'kk' was unexpected" in message
    )


def test_write_config_leaves_an_unchanged_file_alone(tmp_path):
    config = validate_config({"run": "mine"})
    path = tmp_path / "results" / "mine" / "config.yaml"
    assert write_config(config, path, "note")
    os.utime(path, (1_000_000, 1_000_000))
    assert not write_config(config, path, "note")
    assert path.stat().st_mtime == 1_000_000 and load_config(path) == config
    assert write_config({**config, "run": "other"}, path, "note")
    assert load_config(path)["run"] == "other"
