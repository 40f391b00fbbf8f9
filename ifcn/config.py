"""Run configuration: a YAML file validated against the workflow's schema, defaults filled in.

The schema (workflow/schemas/config.schema.yaml) is the single source of truth for keys, types
and defaults; Snakemake validates the same file with the same schema.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ifcn.errors import IfcnError


def _schema_path() -> Path:
    """The schema file: inside the package when installed from a wheel (pyproject.toml ships
    workflow/schemas as ``ifcn/schemas``), else the workflow's own file beside the package."""
    package = Path(__file__).resolve().parent
    installed = package / "schemas" / "config.schema.yaml"
    if installed.is_file():
        return installed
    return package.parent / "workflow" / "schemas" / "config.schema.yaml"


SCHEMA_PATH = _schema_path()


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


def validate_config(config: dict, source: str | Path = "<config>") -> dict:
    """Validate `config` and return a copy with every default filled in."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise IfcnError(f"invalid config at '{where}': {err.message}", source)
    full = copy.deepcopy(config)
    _fill_defaults(full, schema)
    return full


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config file, apply nested `overrides`, validate and fill defaults."""
    path = Path(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise IfcnError("config file not found", path) from None
    except yaml.YAMLError as exc:
        raise IfcnError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise IfcnError("config must be a mapping of keys to values", path)
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return validate_config(raw, path)


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
