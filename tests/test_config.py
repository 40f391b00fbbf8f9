"""Config files: validated against the workflow's schema, defaults filled, errors on one line."""

from pathlib import Path

import pytest
import yaml

from ifcn.cli import main as cli_main
from ifcn.config import load_config, schema_markdown
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
