"""Run configuration: YAML validated against the workflow's schema, defaults filled in.

The schema (workflow/schemas/config.schema.yaml) is the single source of truth for keys, types,
defaults and ranges; a dataset's file paths that the config leaves out derive from ``run`` and
``data.root`` through the dataset registry (`ifcn.data.datasets`). The workflow layers its
``--configfile`` and ``--config`` overrides with `run_config` and writes the result to
results/<run>/config.yaml (`write_run_config`), the one file every stage then reads: each
command takes it as ``--config`` (`config_option`), and its flags only override keys of it
(`override_option`, `command_config`), validated by the same schema.

Two annotations of the schema (JSON-schema validators ignore unknown keywords) name the keys
that other code must treat apart, so that each list has one copy:

- ``x-retrain: false``: changing the key neither changes a model's weights nor its data order
  (`retrain_neutral`): a run may resume under a new value and the workflow does not retrain.
- ``x-predict: true``: a ``classify`` key that prediction reads from the run's config rather
  than from the classifier's checkpoint (`prediction_keys`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ifcn import atomic, strict_yaml
from ifcn.data import datasets
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


# libyaml's safe loader where PyYAML has it (ten times faster than the pure-Python one)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.load(f, Loader=_SAFE_LOADER)


@functools.cache
def _validator_class() -> Any:
    """Draft 2020-12 as a config means it: an integer is an int (jsonschema takes 5.0, which
    later breaks a range() or a tensor shape), and no number is NaN or infinite (jsonschema's
    minimum and maximum compare False with NaN, so ``--score-threshold nan`` passed)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    check_type = base.VALIDATORS["type"]

    def finite_type(validator: Any, types: Any, instance: Any, schema: dict) -> Any:
        if isinstance(instance, float) and not math.isfinite(instance):
            yield jsonschema.ValidationError(f"{instance} is not a finite number")
        else:
            yield from check_type(validator, types, instance, schema)

    return jsonschema.validators.extend(
        base, validators={"type": finite_type}, type_checker=checker
    )


def _validator(schema: dict) -> Any:
    """A validator of ``schema`` (`_validator_class`). jsonschema is imported here, not with
    the module: its import costs a light command (evaluate, nms) a tenth of a second."""
    return _validator_class()(schema)


def load_schema() -> dict:
    """The schema (a copy the caller may change)."""
    return copy.deepcopy(_schema())


def schema_of(key: str) -> dict | None:
    """The schema of a dotted key (``nms.iou``, ``data.synth``); None for an unknown key."""
    node = _schema()
    for name in key.split("."):
        node = node.get("properties", {}).get(name)
        if node is None:
            return None
    return node


def defaults(section: str) -> dict:
    """The schema's defaults of a section (``nms``, ``data.synth``)."""
    node = schema_of(section)
    if node is None or "properties" not in node:
        raise KeyError(f"no config section {section!r}")
    out: dict = {}
    _fill_defaults(out, node)
    return out


def _marked(section: str, keyword: str, value: Any) -> tuple[str, ...]:
    node = schema_of(section) or {}
    return tuple(k for k, sub in node.get("properties", {}).items() if sub.get(keyword) == value)


def retrain_neutral(section: str) -> tuple[str, ...]:
    """Keys of ``section`` marked ``x-retrain: false``: they change neither the weights nor the
    data order, so a run may resume under new values and the workflow does not retrain."""
    return _marked(section, "x-retrain", False)


def prediction_keys() -> tuple[str, ...]:
    """``classify`` keys marked ``x-predict: true``: what prediction reads from the run's config
    (the rest of the classifier, its architecture and image sizes, from its checkpoint)."""
    return _marked("classify", "x-predict", True)


# Training keys a run may resume under new values of (the proposal model's; the classifier's are
# retrain_neutral("classify")).
RESUME_NEUTRAL = retrain_neutral("train")


def training_settings(config: Mapping, section: str) -> dict:
    """What a model trained by ``section`` (``train`` or ``classify``) depends on: the ``model``
    section and ``section`` without its `retrain_neutral` keys (the workflow's rerun trigger)."""
    neutral = retrain_neutral(section)
    kept = {key: value for key, value in config[section].items() if key not in neutral}
    return {"model": config["model"], section: kept}


def settings_of(config: Mapping, keys: Iterable[str]) -> dict:
    """The values of sections or dotted keys (``infer``, ``report.pictures``) of ``config``:
    a rule's rerun trigger."""
    out = {}
    for key in keys:
        node: Any = config
        for name in key.split("."):
            node = node[name]
        out[key] = node
    return out


def _fill_defaults(instance: Any, schema: dict) -> None:
    """Recursively insert schema defaults for missing object keys (after validation)."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def _first(errors: list) -> Any:
    """The error reported: the first by its path in the config, the same on every run."""
    return sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])[0]


def validate_config(config: dict, source: str | Path = "<config>") -> dict:
    """Validate `config`; return a copy with every default filled in and every path derived."""
    schema = _schema()
    config = strict_yaml.resolve_words(config, schema)
    # an empty config breaks no rule of the schema, which requires nothing (a test checks):
    # the schema's defaults need no validator
    errors = list(_validator(schema).iter_errors(config)) if config else []
    if errors:
        err = _first(errors)
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise IfcnError(f"invalid config at '{where}': {err.message}", source)
    full = copy.deepcopy(config)
    _fill_defaults(full, schema)
    data = full["data"]
    for key, what in datasets.missing_needs(data):
        raise IfcnError(
            f"invalid config at 'data.{key}': dataset '{data['dataset']}' needs {what}", source
        )
    data.update(datasets.dataset_paths(data, full["run"]))
    return full


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML config file holds (not yet validated), read by `ifcn.strict_yaml`:
    no alias bombs, duplicate keys, octal or base-60 numbers."""
    path = Path(path)
    try:
        with open(path) as f:
            raw = strict_yaml.load(f)
    except FileNotFoundError:
        raise IfcnError("config file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IfcnError(f"cannot read the config file ({exc})", path) from None
    except strict_yaml.StrictYamlError as exc:
        raise IfcnError(str(exc), path) from None
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


def set_keys(
    config: Mapping,
    values: Mapping[str, Any],
    names: Mapping[str, str] | None = None,
    source: str | Path | None = None,
) -> dict:
    """A validated copy of ``config`` with dotted keys (``nms.iou``) set to ``values``, defaults
    filled and data paths derived.

    Each value is checked against its key's schema before the whole is, so that a bad value is
    reported as what set it (``names``: key -> e.g. the flag ``--iou``; else the key itself):
    ``--iou: 1.5 is greater than the maximum of 1``. Errors of the rest name ``source``.
    """
    out = copy.deepcopy(dict(config))
    for dotted, value in values.items():
        name = (names or {}).get(dotted, dotted)
        sub = schema_of(dotted)
        if sub is not None:
            value = strict_yaml.resolve_words(value, sub)
            errors = list(_validator(sub).iter_errors(value))
            if errors:
                raise IfcnError(f"{name}: {_first(errors).message}")
        *parents, key = dotted.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise IfcnError(f"cannot set {name}: {parent} is not a section", source)
        node[key] = copy.deepcopy(value)
    return validate_config(out, "<schema defaults>" if source is None else source)


def config_option(
    parser: argparse.ArgumentParser, required: bool = False, reads: bool = True
) -> None:
    """``--config``: the run's config file, whose section the command reads (``reads``; else
    the command only checks it, so that every stage takes the run's ``--config`` alike)."""
    help = "the run's config.yaml (results/<run>/config.yaml)"
    if not reads:
        help += ", checked; this command reads no setting of it"
    elif not required:
        help += "; without it, the schema's defaults (config/README.md)"
    parser.add_argument("--config", required=required, help=help)


class _FromConfig:
    def __repr__(self) -> str:
        return "FROM_CONFIG"


# The `const` of an `override_option` flag given without a value (``nargs="?"``): take the
# value from the config. Not a string: argparse would read a string const with the flag's type.
FROM_CONFIG = _FromConfig()


def override_option(
    parser: argparse.ArgumentParser, flag: str, key: str, help: str, **kwargs: Any
) -> None:
    """Add ``flag``, which overrides config key ``key`` (typed by the schema, None unless given;
    its help names the key and the schema's default). `command_config` applies it."""
    sub = schema_of(key)
    if sub is None:
        raise KeyError(f"no config key {key!r}")
    types = _schema_types(sub)
    if "array" in types:
        kwargs.setdefault("nargs", "+")
        types = _schema_types(sub["items"])
    kwargs["type"] = int if "integer" in types else float if "number" in types else str
    if "enum" in sub:
        kwargs["choices"] = sub["enum"]
    default = json.dumps(sub.get("default"))
    action = parser.add_argument(
        flag, default=None, help=f"{help} (config {key}; default {default})", **kwargs
    )
    table = parser.get_default("config_overrides")
    if table is None:
        table = {}
        parser.set_defaults(config_overrides=table)
    table[key] = (flag, action.dest)


def schema_type(key: str) -> Callable[[str], Any]:
    """An argparse ``type`` for a flag that sets no config key but takes the values of one
    (of its entries for an array key): ``--scale`` of `ifcn viz` takes an ``infer.scales``
    entry. A value outside the key's range is the flag's error, in the schema's words."""
    sub = schema_of(key)
    if sub is None:
        raise KeyError(f"no config key {key!r}")
    if "array" in _schema_types(sub):
        sub = sub["items"]
    types = _schema_types(sub)
    convert: Callable[[str], Any] = (
        int if "integer" in types else float if "number" in types else str
    )

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
        errors = list(_validator(sub).iter_errors(value))
        if errors:
            raise argparse.ArgumentTypeError(_first(errors).message)
        return value

    return parse


def given_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config key -> value of each `override_option` flag given on the command line."""
    table = getattr(args, "config_overrides", None) or {}
    values = {key: getattr(args, dest) for key, (_, dest) in table.items()}
    return {key: value for key, value in values.items() if value not in (None, FROM_CONFIG)}


def command_config(args: argparse.Namespace, base: Mapping | None = None) -> dict:
    """The config a command runs with: its ``--config`` file (else ``base``, else the schema's
    defaults) with the `override_option` flags given laid over it, validated; an error names
    the flag or the file."""
    table = getattr(args, "config_overrides", None) or {}
    names = {key: flag for key, (flag, _) in table.items()}
    path = getattr(args, "config", None)
    raw = read_config_file(path) if path is not None else dict(base or {})
    return set_keys(raw, given_overrides(args), names, path)


def evaluation_first_n(config: Mapping, gt: str | Path, given: bool) -> int | None:
    """``data.first_n`` where it applies: to the evaluation images (``data.val_json``), or to
    any ``gt`` when the command line gave it (``--first-n``)."""
    first_n = config["data"]["first_n"]
    if given or Path(gt).resolve() == Path(config["data"]["val_json"]).resolve():
        return first_n
    return None


def _schema_types(schema: dict) -> set[str]:
    kind = schema.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def yaml_value(text: str, name: str) -> Any:
    """A command-line value read as YAML by `ifcn.strict_yaml` (an error names the flag
    ``name``); text that is not YAML stays text, for the schema to judge."""
    try:
        return strict_yaml.load(text)
    except strict_yaml.StrictYamlError as exc:
        raise IfcnError(f"{name}: {exc}") from None
    except yaml.YAMLError:
        return text


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
            value = yaml_value(value, f"--config {key}")
        if isinstance(value, Mapping) and "object" in types:
            out[key] = coerce_overrides(value, sub)
        elif isinstance(value, str) and types and "string" not in types:
            out[key] = yaml_value(value, f"--config {key}")
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


def write_run_config(
    config: dict, folder: str | Path, sources: Sequence[str | Path], dry_run: bool = False
) -> bool:
    """Write ``folder``/config.yaml, the file the stages of a run folder read, when its text
    changes; returns whether it was written.

    A dry run writes a missing one (the plan reads it) but never changes one, so planning a
    change does not alter a run in progress.
    """
    path = Path(folder) / "config.yaml"
    if dry_run and path.exists():
        return False
    files = " + ".join(str(source) for source in sources)
    note = (
        f"The effective config of {folder} ({files} with --config overrides and schema "
        "defaults), written by the workflow: edit those, not this."
    )
    return write_config(config, path, note)


def config_json(config: dict) -> str:
    """Canonical JSON of a config, stored in checkpoints and output files."""
    return json.dumps(config, sort_keys=True)


def _range_text(schema: dict) -> str:
    """`` (1 to 8192)``, `` (above 0, at most 1)``, ...: a key's range for config/README.md."""
    parts = []
    low, high = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema:
        parts.append(f"above {schema['exclusiveMinimum']}")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"at least {low}")
    elif high is not None:
        parts.append(f"at most {high}")
    items = schema.get("items")
    if items is not None:
        text = f" of {items.get('type')}{_range_text(items)}"
        if "maxItems" in schema:
            text += f", {schema.get('minItems', 0)} to {schema['maxItems']} entries"
        return text
    return f" ({', '.join(parts)})" if parts else ""


def schema_markdown() -> str:
    """config/README.md: every key of the schema with its type, default and description (and
    what its annotations mean), then the dataset registry's table."""
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
            kind += _range_text(sub)
            default = "" if sub.get("type") == "object" else json.dumps(sub.get("default"))
            text = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
            if sub.get("x-retrain") is False:
                text += " Changing it does not retrain."
            if sub.get("x-predict"):
                text += " `ifcn classify predict` reads it from the run's config."
            lines.append(f"| `{name}` | {kind} | {default and f'`{default}`'} | {text} |")
            if sub.get("type") == "object":
                walk(sub, name + ".")

    walk(schema, "")
    lines += [
        "",
        "## Datasets",
        "",
        "The values of `data.dataset`, from the dataset registry `ifcn/data/datasets.py`: what",
        "`ifcn data download` fetches into `data.root`, which `ifcn data convert --format`",
        "converts each split, and the paths `data.train_json`, `data.train_images`,",
        "`data.val_json` and `data.val_images` take when the config leaves them null.",
        "",
        *datasets.markdown_table(),
    ]
    return "\n".join(lines) + "\n"
