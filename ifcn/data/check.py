"""Validate a COCO instances JSON against its images before anything uses it.

Everything `validate_instances` refuses is a problem here too (all of them are listed, not just
the first); besides, every image must be readable and of its recorded size, and every mask
inside its image and non-empty. Any problem fails the check; a stored `area` or `bbox` that
disagrees with the mask, and the quirks the validator tolerates, are only warnings (the
converters repair them). The summary counts images, instances and their COCO size classes per
category. `--disjoint-from` also fails when the JSON shares an image with a training JSON.

The command `ifcn data check` is `ifcn.commands.data_check`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ifcn.data.formats import map_images
from ifcn.data.image import load_image
from ifcn.data.instances import read_instances
from ifcn.data.masks import polygons_outside, segmentation_to_rle, size_class
from ifcn.data.overlap import recorded_image_root
from ifcn.data.rle import rle_area_bbox
from ifcn.errors import IfcnError

MAX_LISTED = 20
# Quirks of the validator that the check reports per image, as problems.
CHECKED_PER_IMAGE = ("polygons reaching outside their image (clipped)",)


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


def check_dataset(
    json_path: str | Path, images_dir: str | Path | None = None, workers: int = 1
) -> CheckReport:
    """Check a COCO JSON and its images; the report lists every problem found."""
    instances = read_instances(json_path, collect=True)
    json_path = instances.path
    if images_dir is None:
        images_dir = recorded_image_root(instances)
        if images_dir is None:
            raise IfcnError("no info.image_root in the JSON: give --images DIR", json_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise IfcnError("image folder not found", images_dir)

    report = CheckReport(problems=list(instances.findings.problems))
    report.warnings.update(
        {k: n for k, n in instances.findings.quirks.items() if k not in CHECKED_PER_IMAGE}
    )
    categories = {i: str(c.get("name", i)) for i, c in instances.categories.items()}
    per_image: dict[int, list] = {}
    for a in instances.annotations:
        per_image.setdefault(a["image_id"], []).append(
            (a["id"], a["category_id"], int(bool(a.get("iscrowd", 0))), a["segmentation"],
             a.get("area"), a.get("bbox"))
        )  # fmt: skip
    images = instances.images
    work = [
        (i, str(images_dir / im["file_name"]), im["height"], im["width"], per_image.get(i, []))
        for i, im in images.items()
    ]
    results = map_images(_check_image, work, len(work), workers, "check")
    rows = []
    for problems, warnings, sizes in results:
        report.problems.extend(problems)
        report.warnings.update(warnings)
        rows.extend(sizes)
    report.images = len(images)
    report.empty_images = sum(1 for i in images if not per_image.get(i))
    report.summary = _summary(rows, categories)
    unused = len(set(categories) - {category for category, _, _ in rows})
    if unused:
        report.warnings["categories without annotations"] += unused
    return report


def _check_image(item: tuple) -> tuple[list[str], Counter, list[tuple]]:
    """Read one image fully and check its masks; returns problems, warnings, (cat, crowd, area).

    The masks are valid (`validate_instances` checked them); what is left to find is a polygon
    clipped by its image's border, an empty mask and stale stored areas and boxes.
    """
    image_id, path, height, width, anns = item
    problems: list[str] = []
    warnings: Counter = Counter()
    where = f"image {image_id} ('{os.path.basename(path)}')"
    try:
        pixels = load_image(path)  # what every stage reads, so refused where they refuse
    except IfcnError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        problems.append(
            f"{where}: file not found"
            if reason == "image file not found"
            else f"{where}: unreadable ({reason})"
        )
    else:
        if pixels.shape[:2] != (height, width):
            problems.append(
                f"{where}: file is {pixels.shape[1]}x{pixels.shape[0]}, the JSON says "
                f"{width}x{height}"
            )
    sizes = []
    for aid, category, crowd, seg, stored_area, stored_bbox in anns:
        rle = segmentation_to_rle(seg, height, width)
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
