"""`ifcn data check`: validate a COCO instances JSON against its images before anything uses it.

Every image must be readable and of its recorded size, every mask inside its image and non-empty,
ids unique, references known. Any of these is a problem and the check fails; a stored `area` or
`bbox` that disagrees with the mask is only a warning (the converters recompute them). The
summary counts images, instances and their COCO size classes per category.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from ifcn.atomic import atomic_path
from ifcn.data.cocojson import (
    load_json,
    polygons_outside,
    require_coco_shape,
    rle_area_bbox,
    segmentation_to_rle,
    size_class,
)
from ifcn.data.formats import map_images
from ifcn.errors import IfcnError

MAX_LISTED = 20


@dataclass
class CheckReport:
    """Outcome of a check: failing problems, tolerated warnings (kind -> count) and the summary."""

    problems: list[str] = field(default_factory=list)
    warnings: Counter = field(default_factory=Counter)
    summary: pd.DataFrame | None = None
    images: int = 0
    empty_images: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def default_image_root(json_path: Path, data: dict) -> Path | None:
    """The image root a converted JSON records in info.image_root, relative to its folder."""
    info = data.get("info")
    if isinstance(info, dict) and isinstance(info.get("image_root"), str):
        return (json_path.parent / info["image_root"]).resolve()
    return None


def check_dataset(
    json_path: str | Path, images_dir: str | Path | None = None, workers: int = 1
) -> CheckReport:
    """Check a COCO JSON and its images; the report lists every problem found."""
    json_path = Path(json_path)
    data = load_json(json_path)
    require_coco_shape(data, json_path)
    if images_dir is None:
        images_dir = default_image_root(json_path, data)
        if images_dir is None:
            raise IfcnError("no info.image_root in the JSON: give --images DIR", json_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise IfcnError("image folder not found", images_dir)

    report = CheckReport()
    categories = _check_categories(data["categories"], report)
    images = _check_images(data["images"], report)
    per_image = _check_annotations(data["annotations"], images, categories, report)

    work = [
        (
            im["id"],
            str(images_dir / im["file_name"]),
            im["height"],
            im["width"],
            im.get("ignore"),
            per_image.get(im["id"], []),
        )
        for im in images.values()
    ]
    results = map_images(_check_image, work, len(work), workers, "check")
    rows = []
    for problems, warnings, sizes in results:
        report.problems.extend(problems)
        report.warnings.update(warnings)
        rows.extend(sizes)
    report.images = len(images)
    with_instances = {im_id for im_id, anns in per_image.items() if anns}
    report.empty_images = len(images) - len(with_instances & set(images))
    report.summary = _summary(rows, categories)
    unused = len(set(categories) - {category for category, _, _ in rows})
    if unused:
        report.warnings["categories without annotations"] += unused
    return report


def _check_categories(records: list, report: CheckReport) -> dict[int, str]:
    out: dict[int, str] = {}
    for i, c in enumerate(records):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            report.problems.append(f"categories[{i}] has no integer id")
        elif c["id"] in out:
            report.problems.append(f"duplicate category id {c['id']}")
        else:
            out[c["id"]] = str(c.get("name", c["id"]))
    return out


def _check_images(records: list, report: CheckReport) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for i, im in enumerate(records):
        fields_ok = isinstance(im, dict) and all(
            isinstance(im.get(k), int) for k in ("id", "height", "width")
        )
        if not fields_ok or not isinstance(im.get("file_name"), str):
            report.problems.append(f"images[{i}] lacks an integer id/height/width or a file_name")
        elif im["id"] in out:
            report.problems.append(f"duplicate image id {im['id']}")
        else:
            out[im["id"]] = im
    return out


def _check_annotations(
    records: list, images: dict[int, dict], categories: dict[int, str], report: CheckReport
) -> dict[int, list]:
    """Per image id: its annotations as (id, category_id, iscrowd, segmentation, area, bbox)."""
    per_image: dict[int, list] = {}
    seen: set = set()
    for i, a in enumerate(records):
        aid = a.get("id") if isinstance(a, dict) else None
        if not isinstance(aid, int):
            report.problems.append(f"annotations[{i}] has no integer id")
            continue
        if aid in seen:
            report.problems.append(f"duplicate annotation id {aid}")
            continue
        seen.add(aid)
        if a.get("image_id") not in images:
            report.problems.append(f"annotation {aid}: unknown image id {a.get('image_id')}")
            continue
        if a.get("category_id") not in categories:
            report.problems.append(f"annotation {aid}: unknown category id {a.get('category_id')}")
            continue
        crowd = a.get("iscrowd", 0)
        if isinstance(crowd, bool):
            report.warnings["iscrowd stored as a boolean"] += 1
        elif crowd not in (0, 1):
            report.problems.append(f"annotation {aid}: iscrowd {crowd!r} is not 0/1")
            continue
        per_image.setdefault(a["image_id"], []).append(
            (aid, a["category_id"], int(crowd), a.get("segmentation"), a.get("area"), a.get("bbox"))
        )
    return per_image


def _check_image(item: tuple) -> tuple[list[str], Counter, list[tuple]]:
    """Read one image fully and check its masks; returns problems, warnings, (cat, crowd, area)."""
    image_id, path, height, width, ignore, anns = item
    problems: list[str] = []
    warnings: Counter = Counter()
    where = f"image {image_id} ('{os.path.basename(path)}')"
    try:
        with Image.open(path) as im:
            if im.size != (width, height):
                problems.append(
                    f"{where}: file is {im.size[0]}x{im.size[1]}, the JSON says {width}x{height}"
                )
            im.load()
    except FileNotFoundError:
        problems.append(f"{where}: file not found")
    except (OSError, SyntaxError, ValueError) as exc:
        problems.append(f"{where}: unreadable ({exc})")
    if ignore is not None:
        try:
            segmentation_to_rle(ignore, height, width)
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{where}: bad 'ignore' RLE ({exc})")
    sizes = []
    for aid, category, crowd, seg, stored_area, stored_bbox in anns:
        try:
            rle = segmentation_to_rle(seg, height, width)
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"annotation {aid} on {where}: {exc}")
            continue
        if polygons_outside(seg, height, width):
            problems.append(f"annotation {aid}: polygon reaches outside {where} ({width}x{height})")
        area, bbox = rle_area_bbox(rle)
        if area == 0:
            problems.append(f"annotation {aid} on {where}: empty mask")
            continue
        if not _near(stored_area, [area], max(1.0, 0.01 * area)):
            warnings["area differs from the mask area by more than 1%"] += 1
        if not _near(stored_bbox, bbox, 1.0):
            warnings["bbox differs from the mask's tight box by more than 1 px"] += 1
        sizes.append((category, crowd, area))
    return problems, warnings, sizes


def _near(stored: object, values: list[float], tol: float) -> bool:
    if not isinstance(stored, list):
        stored = [stored]
    return len(stored) == len(values) and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and abs(s - v) <= tol
        for s, v in zip(stored, values, strict=True)
    )


def _summary(rows: list[tuple], categories: dict[int, str]) -> pd.DataFrame:
    """Per category: instances (non-crowd), crowd, and the instances' COCO size classes."""
    table = pd.DataFrame(
        0,
        index=pd.Index(sorted(categories), name="category_id"),
        columns=["instances", "crowd", "small", "medium", "large"],
    )
    for category, crowd, area in rows:
        if crowd:
            table.loc[category, "crowd"] += 1
        else:
            table.loc[category, "instances"] += 1
            table.loc[category, size_class(area)] += 1
    table.insert(0, "name", [categories[c] for c in table.index])
    table.loc["total"] = ["", *table.iloc[:, 1:].sum().tolist()]
    return table


def format_report(report: CheckReport) -> str:
    """The summary and the findings as text for a terminal or a log."""
    instances = int(report.summary.loc["total", "instances"])
    crowd = int(report.summary.loc["total", "crowd"])
    lines = [
        f"images: {report.images} ({report.empty_images} without annotations); "
        f"instances: {instances} (+ {crowd} crowd)",
        report.summary.to_string(),
    ]
    lines += [f"warning: {n} × {kind}" for kind, n in sorted(report.warnings.items())]
    lines += [f"problem: {p}" for p in report.problems[:MAX_LISTED]]
    if len(report.problems) > MAX_LISTED:
        lines.append(f"... and {len(report.problems) - MAX_LISTED} more problems")
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Validate a COCO instances JSON and its images; print a summary table.",
        add_help=add_help,
    )
    parser.add_argument("--json", type=Path, required=True, help="COCO instances JSON")
    parser.add_argument(
        "--images", type=Path, help="image root (default: the JSON's info.image_root)"
    )
    parser.add_argument("--out", type=Path, help="write the summary table here (CSV) if it passes")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes over images"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    report = check_dataset(args.json, args.images, workers=args.workers)
    print(format_report(report))
    if not report.ok:
        raise IfcnError(
            f"check failed with {len(report.problems)} problems; first: {report.problems[0]}",
            args.json,
        )
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            report.summary.to_csv(tmp)
    print(f"check passed: {args.json}")
    return 0
