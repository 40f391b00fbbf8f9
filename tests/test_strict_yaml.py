"""Config files read as their writer means them: alias bombs, duplicate keys and YAML 1.1's
octal and base-60 numbers refused in one line naming the line; yes/no/on/off read as the
schema wants them."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import yaml

from ifcn import strict_yaml
from ifcn.cli import main as cli_main
from ifcn.config import load_config, read_config_file, set_keys, validate_config, write_config
from ifcn.errors import IfcnError


def _config(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def billion_laughs(levels: int = 9) -> str:
    """A valid-looking config whose aliases expand to 9**levels numbers (9 levels: 387 million;
    PyYAML builds it in microseconds, the validator's message about it then never ends)."""
    parts = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for level in range(1, levels):
        parts.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "evaluate:\n  max_dets: [" + ", ".join(parts) + "]\n"


def test_a_billion_laughs_fails_fast_in_little_memory(tmp_path, capsys):
    path = _config(tmp_path, billion_laughs())
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(IfcnError) as info:
        load_config(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(info.value) == (
        f"{path}: line 2: its aliases expand to more than {strict_yaml.MAX_NODES} values; "
        "a config is a few hundred"
    )
    assert seconds < 5 and peak < 20e6, (seconds, peak)
    # a command says it in one line, before any work
    assert cli_main(["nms", "--config", str(path), "--candidates", "c.h5", "--out", "p.h5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expand to more than" in err


def test_a_recursive_alias_is_refused(tmp_path):
    with pytest.raises(IfcnError, match=r"run.yaml: line 2: an alias refers to itself$"):
        read_config_file(_config(tmp_path, "evaluate:\n  max_dets: &a [1, *a]\n"))


def test_aliases_and_merge_keys_within_the_limit_still_work(tmp_path):
    text = (
        "infer: {scales: &s [128, 192], max_size: 256}\n"
        "train: {scales: *s}\n"
        "classify: &c {iters: 4, fc_dim: 16}\n"
        "nms: {top_n: 7}\n"
    )
    config = load_config(_config(tmp_path, text))
    assert config["train"]["scales"] == config["infer"]["scales"] == [128, 192]
    # a merge key's own keys override the merged ones: not a duplicate
    merged = strict_yaml.load("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  y: 3\n")
    assert merged["mine"] == {"x": 1, "y": 3}


def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path, capsys):
    path = _config(tmp_path, "model:\n  m: 21\n  k: 5\n  m: 7\n")
    with pytest.raises(IfcnError) as info:
        read_config_file(path)
    assert str(info.value) == (
        f"{path}: line 4: key 'm' given twice in one mapping (also on line 2)"
    )
    # the same key in two sections is no duplicate
    assert read_config_file(_config(tmp_path, "train: {seed: 1}\nclassify: {seed: 2}\n"))


@pytest.mark.parametrize(
    "text,message",
    [
        ("model:\n  m: 021\n", "line 2: 021 is the octal number 17 in YAML 1.1: write 21 for "
         "the decimal number, or quote it for text"),
        ("train:\n  seed: -010\n", "line 2: -010 is the octal number -8 in YAML 1.1: write -10 "
         "for the decimal number, or quote it for text"),
        ("run: 1:30\n", "line 1: 1:30 is the base-60 number 90 in YAML 1.1: quote it for text"),
        ("nms: {iou: 1:30.5}\n", "line 1: 1:30.5 is the base-60 number 90.5 in YAML 1.1: quote "
         "it for text"),
    ],
)  # fmt: skip
def test_yaml_1_1_numbers_are_refused_saying_what_to_write(tmp_path, text, message):
    path = _config(tmp_path, text)
    with pytest.raises(IfcnError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_quoted_or_plain_numbers_read_as_written(tmp_path):
    config = load_config(_config(tmp_path, "run: '021'\nmodel: {m: 21, k: 0x3}\n"))
    assert config["run"] == "021" and (config["model"]["m"], config["model"]["k"]) == (21, 3)


def test_yes_no_on_off_are_read_as_the_schema_wants(tmp_path):
    text = (
        "run: no\ndata: {train_split: on, val_split: Off}\ntrain: {flip: yes}\n"
        "classify: {flip: NO}\n"
    )
    config = load_config(_config(tmp_path, text))
    assert config["run"] == "no" and config["train"]["flip"] is True
    assert config["classify"]["flip"] is False
    assert (config["data"]["train_split"], config["data"]["val_split"]) == ("on", "Off")
    assert type(config["run"]) is str  # a plain string, which every writer can write
    out = tmp_path / "results" / "no" / "config.yaml"
    write_config(config, out, "note")
    assert load_config(out) == config
    # the same for a flag or --set value, judged by its key's schema
    assert (
        set_keys(validate_config({}), {"train.flip": strict_yaml.load("off")})["train"]["flip"]
        is False
    )
    # true and false are booleans wherever they are
    with pytest.raises(IfcnError, match="True is not of type 'string'"):
        load_config(_config(tmp_path, "run: true\n"))


def test_a_file_too_large_or_nested_too_deep_is_one_line(tmp_path):
    big = _config(tmp_path, "# " + "x" * strict_yaml.MAX_BYTES + "\n")
    with pytest.raises(IfcnError, match=r"more than 1048576 characters; a config is a few"):
        read_config_file(big)
    deep = _config(tmp_path, "[" * 50_000 + "]" * 50_000)
    with pytest.raises(IfcnError, match=r"run.yaml: nested too deep$"):
        read_config_file(deep)


def test_command_line_yaml_values_are_read_alike():
    from ifcn.commands.ablation import parse_setting
    from ifcn.config import coerce_overrides

    with pytest.raises(IfcnError, match=r"^--set model.m: line 1: 021 is the octal number 17"):
        parse_setting("model.m=021")
    with pytest.raises(IfcnError, match=r"^--config model: line 1: key 'm' given twice"):
        coerce_overrides({"model": "{m: 3, m: 5}"})
    assert parse_setting("model.m=21") == ("model.m", 21)
    assert yaml.safe_load("x: 021")["x"] == 17  # what the strict loader guards against
