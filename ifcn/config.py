"""Run configuration: YAML validated against the workflow's schema, defaults filled in.

The schema (workflow/schemas/config.schema.yaml) is the single source of truth for keys, types
and defaults; a dataset's file paths that the config leaves out derive from ``run`` and
``data.root`` (`dataset_paths`). The workflow layers its ``--configfile`` and ``--config``
overrides with `run_config` and writes the result to results/<run>/config.yaml, the one file
every stage then reads (`write_config`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ifcn import atomic
from ifcn.errors import IfcnError

# Training keys that change neither the weights nor the data order: a run may resume under new
# values of these, and the workflow does not retrain for them.
RESUME_NEUTRAL = ("workers", "log_period", "checkpoint_period", "keep_checkpoints", "tensorboard")


def _schema_path() -> Path:
    """The schema file: inside the package when installed from a wheel (pyproject.toml ships
    workflow/schemas as ``ifcn/schemas``), else the workflow's own file beside the package."""
    package = Path(__file__).resolve().parent
    installed = package / "schemas" / "config.schema.yaml"
    if installed.is_file():
        return installed
    return package.parent / "workflow" / "schemas" / "config.schema.yaml"


SCHEMA_PATH = _schema_path()

# What each dataset cannot do without (no default can stand in for these): data key -> what.
DATASET_NEEDS: dict[str, dict[str, str]] = {
    "coco": {"source": "the folder of your COCO export"},
}


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _fill_defaults(instance: Any, schema: dict) -> None:
    """Recursively insert schema defaults for missing object keys (after validation)."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def dataset_paths(data: Mapping[str, Any], run: str) -> dict[str, str]:
    """The root, JSON files and image folders of ``data``, each derived unless given.

    The root defaults to resources/<run>; the JSON files lie in it, named after their split;
    the image folders are where the dataset's own layout (or the user's COCO export,
    ``source``/<split>) keeps them.
    """
    root = data.get("root") or f"resources/{run}"
    dataset = data["dataset"]
    train_name, val_name = "train", "val"
    if dataset == "synthetic":
        train_images = val_images = f"{root}/images"
    elif dataset == "coco":
        train_name, val_name = data["train_split"], data["val_split"]
        train_images = f"{data['source']}/{train_name}"
        val_images = f"{data['source']}/{val_name}"
    elif dataset in ("coco2014", "coco2017"):
        train_name, val_name = f"train{dataset[-4:]}", f"val{dataset[-4:]}"
        train_images, val_images = f"{root}/{train_name}", f"{root}/{val_name}"
    elif dataset == "pennfudan":
        train_images = val_images = f"{root}/PennFudanPed/PNGImages"
    else:  # voc2012, sbd: SBD's img/ holds the images of every split SBD annotates
        train_images = val_images = f"{root}/benchmark_RELEASE/dataset/img"
    derived = {
        "root": root,
        "train_json": f"{root}/{train_name}.json",
        "train_images": train_images,
        "val_json": f"{root}/{val_name}.json",
        "val_images": val_images,
    }
    return {key: data.get(key) or value for key, value in derived.items()}


def validate_config(config: dict, source: str | Path = "<config>") -> dict:
    """Validate `config`; return a copy with every default filled in and every path derived."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise IfcnError(f"invalid config at '{where}': {err.message}", source)
    full = copy.deepcopy(config)
    _fill_defaults(full, schema)
    data = full["data"]
    for key, what in DATASET_NEEDS.get(data["dataset"], {}).items():
        if data.get(key) is None:
            raise IfcnError(
                f"invalid config at 'data.{key}': dataset '{data['dataset']}' needs {what}",
                source,
            )
    data.update(dataset_paths(data, full["run"]))
    return full


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML config file holds (not yet validated)."""
    path = Path(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise IfcnError("config file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IfcnError(f"cannot read the config file ({exc})", path) from None
    except yaml.YAMLError as exc:
        raise IfcnError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise IfcnError("config must be a mapping of keys to values", path)
    return raw


def merge_config(base: dict, update: Mapping) -> dict:
    """``base`` with ``update`` laid over it, section by section (nested mappings merge)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config file, apply nested `overrides`, validate and fill defaults."""
    raw = merge_config(read_config_file(path), overrides or {})
    return validate_config(raw, path)


def _schema_types(schema: dict) -> set[str]:
    kind = schema.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def coerce_overrides(overrides: Mapping, schema: dict | None = None) -> dict:
    """Command-line values as the schema types them.

    Snakemake's ``--config section='{key: value}'`` hands nested values over as strings
    ("true", "0.7"): a string where the schema wants another type is read as YAML, and a
    number where it wants a string (``run=2024``) becomes that string.
    """
    schema = load_schema() if schema is None else schema
    out: dict = {}
    for key, value in overrides.items():
        sub = schema.get("properties", {}).get(key, {})
        types = _schema_types(sub)
        if isinstance(value, str) and "object" in types:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, Mapping) and "object" in types:
            out[key] = coerce_overrides(value, sub)
        elif isinstance(value, str) and types and "string" not in types:
            try:
                out[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                out[key] = value
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and types == {"string"}
        ):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def run_config(files: Sequence[str | Path], overrides: Mapping | None = None) -> dict:
    """The effective config of a run: ``files`` laid over each other in order, then the
    command-line ``overrides`` (coerced to the schema's types), validated, defaults filled.

    Errors name the files (and ``--config`` when there are overrides).
    """
    raw: dict = {}
    for path in files:
        raw = merge_config(raw, read_config_file(path))
    if overrides:
        raw = merge_config(raw, coerce_overrides(overrides))
    source = " + ".join(str(path) for path in files) or "<no config file>"
    if overrides:
        source += " with --config " + json.dumps(dict(overrides), sort_keys=True)
    return validate_config(raw, source)


def config_yaml(config: dict, note: str) -> str:
    """The text of a config file: a comment line, then the keys in the schema's order."""
    return f"# {note}\n" + yaml.safe_dump(config, sort_keys=False)


def write_config(config: dict, path: str | Path, note: str) -> bool:
    """Write ``config`` to ``path`` unless the file already holds exactly that text.

    Returns whether the file was (re)written: an unchanged config keeps its time stamp.
    """
    path = Path(path)
    text = config_yaml(config, note)
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic.write_text(path, text)
    return True


def config_json(config: dict) -> str:
    """Canonical JSON of a config, stored in checkpoints and output files."""
    return json.dumps(config, sort_keys=True)


def schema_markdown() -> str:
    """config/README.md: every key of the schema with its type, default and description."""
    schema = load_schema()
    lines = [
        "# Configuration keys",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` (a test checks it is current:",
        'regenerate with `python -c "from ifcn.config import schema_markdown as s;'
        " print(s(), end='')\" > config/README.md`).",
        "",
        " ".join(schema["description"].split()),
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]

    def walk(node: dict, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            name = f"{prefix}{key}"
            kind = sub.get("type", "")
            kind = " or ".join(kind) if isinstance(kind, list) else kind
            if "enum" in sub:
                kind += " (" + ", ".join(map(str, sub["enum"])) + ")"
            default = "" if sub.get("type") == "object" else json.dumps(sub.get("default"))
            text = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
            lines.append(f"| `{name}` | {kind} | {default and f'`{default}`'} | {text} |")
            if sub.get("type") == "object":
                walk(sub, name + ".")

    walk(schema, "")
    return "\n".join(lines) + "\n"
