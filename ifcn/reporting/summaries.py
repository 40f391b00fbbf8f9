"""The small files a run leaves for people, read back with their shape checked.

ar.json (`ifcn evaluate`), segm_eval.json (`ifcn classify evaluate`), the ablation tables
(`ifcn ablation table`) and figures.json (the index of the pictures `ifcn viz --pictures`
draws, written here too). One reader per kind, so the report and the ablation table trust no
file blindly: a file of the wrong kind, binary data, a string or NaN where a figure belongs is
one IfcnError naming the file and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd

from ifcn import atomic
from ifcn.errors import IfcnError

_FRACTION = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}

AR_SCHEMA = {
    "type": "object",
    "patternProperties": {"^AR@[0-9]+$": _FRACTION},
    "properties": {
        "matching": {"type": "string"},
        "by_area": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": _FRACTION}},
        "iou_thresholds": {"type": "array", "minItems": 1,
                           "items": {"type": "number", "minimum": 0, "maximum": 1}},
        "recall": {"type": "object", "additionalProperties": {
            "type": "array", "items": _FRACTION}},
        "num_images": _COUNT,
        "num_gt": {"anyOf": [_COUNT, {"type": "object", "additionalProperties": _COUNT}]},
        "inputs": {"type": "object", "additionalProperties": {
            "type": "string", "pattern": "^[0-9a-f]{64}$"}},
    },
}  # fmt: skip

SEGM_EVAL_SCHEMA = {
    "type": "object",
    "required": ["mAP@0.5", "mAP@0.7"],
    "properties": {
        "mAP@0.5": _FRACTION,
        "mAP@0.7": _FRACTION,
        "per_category": {"type": "array", "items": {
            "type": "object",
            "required": ["category_id"],
            "properties": {"category_id": {"type": "integer"}, "name": {"type": "string"},
                           "AP@0.5": _FRACTION, "AP@0.7": _FRACTION},
        }},
        "num_images": _COUNT,
        "num_gt": _COUNT,
    },
}  # fmt: skip

FIGURES_SCHEMA = {
    "type": "object",
    "required": ["pictures"],
    "properties": {"pictures": {"type": "array", "items": {
        "type": "object",
        "required": ["file", "caption"],
        "properties": {"file": {"type": "string", "pattern": r"^[^/\\]+\.png$"},
                       "caption": {"type": "string"}, "kind": {"type": "string"},
                       "image_id": {"type": "integer"}},
    }}},
}  # fmt: skip


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: str | Path) -> Any:
    """The JSON value of a UTF-8 text file (NaN and Infinity refused)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except OSError as exc:
        raise IfcnError(f"cannot read the file ({exc.strerror or exc})", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IfcnError("not a UTF-8 text file (binary data?)", path) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise IfcnError(f"not valid JSON ({exc})", path) from None


def _check(value: Any, schema: dict, path: Path, kind: str) -> None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
        message = " ".join(error.message.split())
        if len(message) > 160:
            message = message[:157] + "..."
        raise IfcnError(f"not {kind}: at '{where}': {message}", path)


def read_ar(path: str | Path) -> dict:
    """ar.json of `ifcn evaluate`: AR@N fractions (null where nothing counts), its curves."""
    path = Path(path)
    kind = "an ar.json of `ifcn evaluate`"
    ar = read_json(path)
    _check(ar, AR_SCHEMA, path, kind)
    if not any(key.startswith("AR@") for key in ar):
        raise IfcnError(f"not {kind} (no AR@N figures)", path)
    thresholds = ar.get("iou_thresholds")
    for n, curve in ar.get("recall", {}).items():
        if thresholds is not None and len(curve) != len(thresholds):
            raise IfcnError(
                f"not {kind}: recall at N = {n} has {len(curve)} values for "
                f"{len(thresholds)} IoU thresholds",
                path,
            )
    return ar


def read_segm_eval(path: str | Path) -> dict:
    """segm_eval.json of `ifcn classify evaluate`: mAP@0.5, mAP@0.7 and AP per category."""
    path = Path(path)
    segm = read_json(path)
    _check(segm, SEGM_EVAL_SCHEMA, path, "a segm_eval.json of `ifcn classify evaluate`")
    return segm


def _read_table(path: Path, sep: str = ",") -> pd.DataFrame:
    """A CSV (or TSV) file as a frame; a missing or unparsable file is one IfcnError."""
    kind = "TSV" if sep == "\t" else "CSV"
    try:
        return pd.read_csv(path, sep=sep)
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise IfcnError(f"not a readable {kind} ({' '.join(str(exc).split())})", path) from None


def read_ablation_table(path: str | Path) -> pd.DataFrame:
    """ablation_<table>.csv of `ifcn ablation table`: a variant column and AR@N fractions."""
    path = Path(path)
    frame = _read_table(path)
    columns = [c for c in frame.columns if str(c).startswith("AR@")]
    if "variant" not in frame.columns or not columns:
        raise IfcnError("an ablation table needs a variant column and AR@N columns", path)
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = frame[column].notna() & (values.isna() | (values < 0) | (values > 1))
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise IfcnError(
                f"{column} of variant {frame['variant'].iloc[row]!r} is "
                f"{frame[column].iloc[row]!r}, not a fraction in [0, 1]",
                path,
            )
        frame[column] = values
    return frame


@dataclass(frozen=True)
class Picture:
    """A PNG of the report and the sentence shown under it."""

    path: Path
    caption: str
    kind: str = "picture"
    image_id: int | None = None


def write_figures_index(pictures: Sequence[Picture], path: str | Path) -> Path:
    """figures.json beside the PNGs: each picture's file name, kind, image and caption."""
    path = Path(path)
    entries = []
    for picture in pictures:
        if Path(picture.path).parent.resolve() != path.parent.resolve():
            raise IfcnError("pictures must lie beside their index", picture.path)
        entry = {"file": Path(picture.path).name, "kind": picture.kind, "caption": picture.caption}
        if picture.image_id is not None:
            entry["image_id"] = int(picture.image_id)
        entries.append(entry)
    return atomic.write_text(path, json.dumps({"pictures": entries}, indent=1) + "\n")


def read_figures_index(path: str | Path) -> list[Picture]:
    """The pictures figures.json lists, each PNG checked to be there beside it."""
    path = Path(path)
    index = read_json(path)
    _check(index, FIGURES_SCHEMA, path, "a figures.json of `ifcn viz --pictures`")
    pictures = []
    for entry in index["pictures"]:
        png = path.parent / entry["file"]
        if not png.is_file():
            raise IfcnError(f"lists {entry['file']}, which is not there", path)
        pictures.append(
            Picture(png, entry["caption"], entry.get("kind", "picture"), entry.get("image_id"))
        )
    return pictures


def fraction_text(value: float | None) -> str:
    """A fraction as a percentage with one decimal; a dash where there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}"


def read_training_log(path: str | Path) -> pd.DataFrame:
    """train_log.csv of `ifcn train`: one row per logged step, iteration and loss columns."""
    path = Path(path)
    frame = _read_table(path)
    columns = ["iteration"] + [c for c in frame.columns if str(c).startswith("loss")]
    if "iteration" not in frame.columns or "loss" not in frame.columns:
        raise IfcnError("a training log needs iteration and loss columns", path)
    if frame.empty:
        raise IfcnError("a training log with no rows: the run logged no step", path)
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        finite = values.map(math.isfinite).to_numpy()
        if not finite.all():
            row = int((~finite).nonzero()[0][0])
            raise IfcnError(
                f"{column} in line {row + 2} is {frame[column].iloc[row]!r}, not a finite number",
                path,
            )
        frame[column] = values
    return frame[columns]


def read_benchmarks(folder: str | Path) -> pd.DataFrame:
    """The Snakemake benchmark files (``<rule>.tsv``) of a run: one row per job, its wall
    seconds (column ``s``), sorted by time spent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IfcnError("not a folder of Snakemake benchmark files", folder)
    rows = []
    for path in sorted(folder.glob("*.tsv")):
        frame = _read_table(path, sep="\t")
        seconds = pd.to_numeric(frame.get("s"), errors="coerce")
        if seconds is None or not len(seconds) or not seconds.map(math.isfinite).all():
            raise IfcnError("a Snakemake benchmark file needs finite seconds in column s", path)
        rows.append({"job": path.stem, "seconds": float(seconds.mean())})
    frame = pd.DataFrame(rows, columns=["job", "seconds"])
    return frame.sort_values("seconds", ascending=False, ignore_index=True)
