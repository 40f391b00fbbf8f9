"""Config files: validated against the workflow's schema, defaults filled, errors on one line;
command-line flags that override keys through the schema; key lists from its annotations."""

import argparse
import importlib
import json
import os
from pathlib import Path

import pytest
import yaml

from ifcn.cli import COMMANDS
from ifcn.cli import main as cli_main
from ifcn.config import (
    RESUME_NEUTRAL,
    coerce_overrides,
    command_config,
    defaults,
    evaluation_first_n,
    load_config,
    load_schema,
    prediction_keys,
    retrain_neutral,
    run_config,
    schema_markdown,
    schema_of,
    set_keys,
    training_settings,
    validate_config,
    write_config,
    write_run_config,
)
from ifcn.errors import IfcnError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_configs_validate(name):
    config = load_config(ROOT / "config" / name)
    assert config["model"]["m"] >= 1 and config["train"]["iters"] >= 1


def test_defaults_are_the_papers_schedule_on_the_cpu_backbone(tmp_path):
    """The schema's defaults: the paper's k, m, schedule, sampling, scales and N, on the `tiny`
    backbone from random weights (the paper: ImageNet VGG-16, config/voc2012.yaml)."""
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


def test_coco_config_uses_deepmasks_scales_as_the_paper_says():
    """§4.2: on COCO, "the same multiple scales used in [8]" (DeepMask: the image scaled by
    2^{-2..1} in steps of 1/2) for training and testing; as shorter sides of a 640x480 image."""
    config = load_config(ROOT / "config" / "coco.yaml")
    deepmask = [round(480 * 2 ** (e / 2)) for e in range(-4, 3)]
    assert deepmask == [120, 170, 240, 339, 480, 679, 960]
    assert config["train"]["scales"] == deepmask
    assert config["infer"]["scales"] == deepmask
    voc = load_config(ROOT / "config" / "voc2012.yaml")
    assert voc["infer"]["scales"] == [round(600 * 1.5**e) for e in range(-4, 2)]  # §3.3


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


def _nms_args(*argv: str):
    from ifcn.commands import nms

    return nms.get_args_parser().parse_args(["--candidates", "c.h5", "--out", "p.h5", *argv])


def test_a_flag_overrides_the_config_file_and_absent_ones_keep_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"nms": {"iou": 0.6, "top_n": 10}}))
    config = command_config(_nms_args("--config", str(path), "--iou", "0.7"))
    assert config["nms"] == {"iou": 0.7, "top_n": 10, "mask_threshold": 0.5}
    assert command_config(_nms_args("--config", str(path)))["nms"]["iou"] == 0.6
    # no config file: the schema's defaults, the only place they are written
    assert command_config(_nms_args())["nms"] == defaults("nms")
    assert command_config(_nms_args("--top-n", "5"))["nms"]["top_n"] == 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--iou", "1.5"], "--iou: 1.5 is greater than the maximum of 1"),
        (["--top-n", "0"], "--top-n: 0 is less than the minimum of 1"),
        (["--mask-threshold", "-0.1"], "--mask-threshold: -0.1 is less than the minimum of 0"),
    ],
)
def test_a_bad_flag_is_refused_by_the_schema_naming_the_flag(argv, message, capsys):
    with pytest.raises(IfcnError) as info:
        command_config(_nms_args(*argv))
    assert str(info.value) == message
    code = cli_main(["nms", "--candidates", "c.h5", "--out", "p.h5", *argv])
    assert code == 2 and capsys.readouterr().err.strip() == f"ifcn nms: error: {message}"


def test_a_bad_config_file_is_named_and_a_good_flag_does_not_hide_it(tmp_path):
    path = _write(tmp_path, {"nms": {"iou": 2}})
    with pytest.raises(IfcnError, match=r"bad.yaml: invalid config at 'nms.iou'"):
        command_config(_nms_args("--config", str(path), "--top-n", "3"))
    # the flag's own key is checked as the flag's, then the file with it laid over
    assert command_config(_nms_args("--config", str(path), "--iou", "0.5"))["nms"]["iou"] == 0.5


def _override_actions():
    """(command, flag, config key, argparse action) of every flag that overrides a config key."""
    for words, module_name in COMMANDS.items():
        parser = importlib.import_module(module_name).get_args_parser()
        parsers = [parser] + [
            sub
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for sub in action.choices.values()
        ]
        for each in parsers:
            actions = {action.dest: action for action in each._actions}
            for key, (flag, dest) in (each.get_default("config_overrides") or {}).items():
                yield " ".join(words), flag, key, actions[dest]


def test_every_override_flag_defaults_to_none_and_shows_the_schemas_default():
    found = list(_override_actions())
    # every flag that once repeated a schema default or range is an override of its key now
    assert {(command, flag, key) for command, flag, key, _ in found} >= {
        ("nms", "--iou", "nms.iou"), ("nms", "--top-n", "nms.top_n"),
        ("nms", "--mask-threshold", "nms.mask_threshold"),
        ("evaluate", "--max-dets", "evaluate.max_dets"),
        ("evaluate", "--matching", "evaluate.matching"),
        ("evaluate", "--first-n", "data.first_n"),
        ("classify evaluate", "--ap", "classify.ap"),
        ("classify evaluate", "--first-n", "data.first_n"),
        ("data convert", "--first-n", "data.first_n"),
        ("data synth", "--seed", "data.synth.seed"),
        ("data synth", "--num-train", "data.synth.num_train"),
        ("data synth", "--max-objects", "data.synth.max_objects"),
        ("train", "--iters", "train.iters"), ("train", "--workers", "train.workers"),
        ("infer", "--workers", "infer.workers"),
        ("classify train", "--workers", "classify.workers"),
        ("classify predict", "--nms-iou", "classify.nms_iou"),
        ("classify predict", "--test-scale", "classify.test_scale"),
        ("classify predict", "--workers", "classify.workers"),
        ("viz", "--pictures", "report.pictures"), ("viz", "--top-n", "predict.pictures"),
    }  # fmt: skip
    for command, flag, key, action in found:
        assert action.default is None, (command, flag)
        default = json.dumps(schema_of(key)["default"])
        assert f"config {key}; default {default}" in action.help, (command, flag)


def test_key_lists_are_the_schemas_annotations(monkeypatch):
    from ifcn import config as config_module
    from ifcn.classify import training as classify_training
    from ifcn.training import checkpoint

    assert RESUME_NEUTRAL == retrain_neutral("train") == checkpoint.RESUME_NEUTRAL
    assert set(RESUME_NEUTRAL) == {
        "workers", "log_period", "checkpoint_period", "keep_checkpoints", "tensorboard",
    }  # fmt: skip
    assert classify_training.RESUME_NEUTRAL == retrain_neutral("classify")
    assert {"score_threshold", "nms_iou", "detections_per_image", "test_scale", "ap"} <= set(
        retrain_neutral("classify")
    )
    assert set(prediction_keys()) == {
        "top_n", "test_scale", "score_threshold", "nms_iou", "detections_per_image", "workers",
    }  # fmt: skip
    # what decides a retraining leaves out exactly the marked keys
    config = validate_config({})
    trigger = training_settings(config, "classify")
    assert set(trigger) == {"model", "classify"} and trigger["model"] == config["model"]
    assert set(trigger["classify"]) == set(config["classify"]) - set(retrain_neutral("classify"))
    # a new annotation in the schema is all it takes to change a list
    schema = load_schema()
    schema["properties"]["classify"]["properties"]["fc_dim"]["x-predict"] = True
    schema["properties"]["train"]["properties"]["seed"]["x-retrain"] = False
    monkeypatch.setattr(config_module, "_schema", lambda: schema)
    assert "fc_dim" in prediction_keys() and "seed" in retrain_neutral("train")


def test_an_empty_config_breaks_no_rule_of_the_schema():
    """validate_config skips the validator for {} (a light command's start-up): the schema
    requires nothing, so this holds."""
    import jsonschema

    assert not list(jsonschema.Draft202012Validator(load_schema()).iter_errors({}))


def test_set_keys_names_the_key_or_what_set_it():
    base = validate_config({})
    with pytest.raises(IfcnError, match=r"^model\.k: 'five' is not of type 'integer'$"):
        set_keys(base, {"model.k": "five"})
    with pytest.raises(IfcnError, match=r"^--set model\.k: 0 is less than the minimum of 1$"):
        set_keys(base, {"model.k": 0}, {"model.k": "--set model.k"})
    with pytest.raises(IfcnError, match="'kk' was unexpected"):
        set_keys(base, {"model.kk": 3})
    assert set_keys(base, {"nms.iou": 0.5})["nms"]["iou"] == 0.5


def test_first_n_applies_to_the_evaluation_images_unless_given(tmp_path):
    config = validate_config({"run": "mine", "data": {"first_n": 3}})
    assert evaluation_first_n(config, "resources/mine/val.json", given=False) == 3
    assert evaluation_first_n(config, "resources/mine/train.json", given=False) is None
    assert evaluation_first_n(config, "resources/mine/train.json", given=True) == 3


def test_run_configs_are_written_once_and_a_dry_run_leaves_one_alone(tmp_path):
    folder = tmp_path / "results" / "mine"
    config = validate_config({"run": "mine"})
    assert write_run_config(config, folder, ["a.yaml", "b.yaml"])
    text = (folder / "config.yaml").read_text()
    assert text.startswith(f"# The effective config of {folder} (a.yaml + b.yaml")
    other = validate_config({"run": "mine", "nms": {"iou": 0.5}})
    assert not write_run_config(other, folder, ["a.yaml"], dry_run=True)
    assert (folder / "config.yaml").read_text() == text
    assert write_run_config(other, folder, ["a.yaml"])
    assert load_config(folder / "config.yaml")["nms"]["iou"] == 0.5


def test_a_flag_given_without_its_value_takes_the_configs(tmp_path):
    from ifcn.commands import viz

    path = tmp_path / "run.yaml"
    path.write_text("report: {pictures: 4}\n")
    parser = viz.get_args_parser()
    argv = ["--config", str(path), "--out", "o", "--pictures"]
    assert command_config(parser.parse_args(argv))["report"]["pictures"] == 4
    assert command_config(parser.parse_args([*argv, "2"]))["report"]["pictures"] == 2


def _every_key(node: dict, prefix: str = ""):
    for key, sub in node.get("properties", {}).items():
        yield f"{prefix}{key}", sub
        yield from _every_key(sub, f"{prefix}{key}.")


def _types(sub: dict) -> set:
    kind = sub.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def test_every_count_and_size_has_a_finite_maximum(tmp_path, capsys):
    """A slip (``head_channels: 100000000`` asked for 38 GB) fails at once, in one line."""
    unbounded = [
        key
        for key, sub in _every_key(load_schema())
        if ("integer" in _types(sub) and "maximum" not in sub)
        or ("array" in _types(sub) and ("maximum" not in sub["items"] or "maxItems" not in sub))
    ]
    assert not unbounded
    path = _write(tmp_path, {"model": {"head_channels": 100_000_000}})
    assert cli_main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ifcn train: error: {path}: invalid config at 'model.head_channels': 100000000 is "
        "greater than the maximum of 8192"
    )
    # the shipped configs and the schema's defaults lie inside the bounds (a test above loads
    # each shipped config); so do the defaults:
    assert validate_config({"train": {"scales": [4096] * 32}})["train"]["scales"][0] == 4096


@pytest.mark.parametrize("text,value", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"),
                                        (".NaN", "nan")])  # fmt: skip
def test_nan_and_infinities_never_pass_a_number_check(tmp_path, text, value):
    path = tmp_path / "run.yaml"
    path.write_text(f"classify: {{score_threshold: {text}}}\n")
    with pytest.raises(IfcnError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: invalid config at 'classify.score_threshold': {value} is not a finite number"
    )
    # as Snakemake's --config hands it over
    with pytest.raises(IfcnError, match=r"'nms.iou': nan is not a finite number"):
        run_config([], {"nms": "{iou: .nan}"})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_flag_is_refused_in_one_line(tmp_path, capsys, value):
    """`classify predict --score-threshold nan` once wrote 0 results with exit 0."""
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    out = tmp_path / "results.json"
    argv = ["classify", "predict", "--config", str(config), "--checkpoint", "c.pt",
            "--proposals", "p.h5", "--images", "v.json", "--out", str(out),
            f"--score-threshold={value}"]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    expected = f"--score-threshold: {float(value)} is not a finite number"
    assert err == f"ifcn classify predict: error: {expected}" and not out.exists()
    with pytest.raises(IfcnError, match=f"^--iou: {float(value)} is not a finite number$"):
        command_config(_nms_args(f"--iou={value}", "--config", str(config)))


def test_a_float_is_not_an_integer(tmp_path, capsys):
    """jsonschema takes 5.0 as an integer; a range() or a tensor shape later did not."""
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  k: 5.0\n")
    assert cli_main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ifcn train: error: {path}: invalid config at 'model.k': 5.0 is not of type 'integer'"
    )
    with pytest.raises(IfcnError, match=r"^train.scales: 128.0 is not of type 'integer'$"):
        set_keys(validate_config({}), {"train.scales": [128.0]})
    with pytest.raises(IfcnError, match="True is not of type 'integer'"):
        validate_config({"model": {"k": True}})
    assert validate_config({"model": {"k": 5}})["model"]["k"] == 5
    assert validate_config({"nms": {"iou": 1}})["nms"]["iou"] == 1  # an int is a number
