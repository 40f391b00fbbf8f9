"""Validate a COCO instances JSON against its images before anything uses it.

Everything `validate_instances` refuses is a problem here too (all of them are listed, not just
the first); besides, every image file must be complete and of its recorded size
(`ifcn.data.image_files`), and every mask inside its image and non-empty. Any problem fails the
check; a stored `area` or `bbox` that disagrees with the mask, and the quirks the validator
tolerates, are only warnings (the converters repair them). The summary counts images, instances
and their COCO size classes per category. `--disjoint-from` also fails when the JSON shares an
image with a training JSON. Every mask is rasterised, in pycocotools' batches over `workers`
processes, and the image files are read over them too.

A passed check is recorded beside the JSON (`ifcn.data.store`), so that the stages that read it
trust it instead of validating it again.

The command `ifcn data check` is `ifcn.commands.data_check`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ifcn.data.formats import map_images
from ifcn.data.image_files import image_item
from ifcn.data.instances import Instances, read_instances
from ifcn.data.jsonio import gc_paused
from ifcn.data.masks import LARGE_AREA, SMALL_AREA, MaskTable, stale_fields
from ifcn.data.overlap import recorded_image_root
from ifcn.data.store import AnnotationStore, check_record, proof_path
from ifcn.errors import IfcnError

MAX_LISTED = 20
# Quirks of the validator that the check reports per annotation, as problems.
CHECKED_PER_IMAGE = ("polygons reaching outside their image (clipped)",)
SIZE_CLASSES = ("small", "medium", "large")


@dataclass
class CheckReport:
    """Outcome of a check: failing problems, tolerated warnings (kind -> count) and the summary;
    and what `record` needs to record a passed check."""

    problems: list[str] = field(default_factory=list)
    warnings: Counter = field(default_factory=Counter)
    summary: pd.DataFrame | None = None
    images: int = 0
    empty_images: int = 0
    instances: Instances | None = field(default=None, repr=False)
    masks: MaskTable | None = field(default=None, repr=False)
    image_stats: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


@gc_paused()
def check_dataset(
    json_path: str | Path, images_dir: str | Path | None = None, workers: int = 1
) -> CheckReport:
    """Check a COCO JSON and its images; the report lists every problem found."""
    instances = read_instances(json_path, collect=True)
    json_path = instances.path
    if images_dir is None:
        images_dir = recorded_image_root(json_path, instances.data.get("info"))
        if images_dir is None:
            raise IfcnError("no info.image_root in the JSON: give --images DIR", json_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise IfcnError("image folder not found", images_dir)

    report = CheckReport(problems=list(instances.findings.problems), instances=instances)
    report.warnings.update(
        {k: n for k, n in instances.findings.quirks.items() if k not in CHECKED_PER_IMAGE}
    )
    images = instances.images
    where = {i: f"image {i} ('{os.path.basename(im['file_name'])}')" for i, im in images.items()}
    items = [
        (str(images_dir / im["file_name"]), im["height"], im["width"]) for im in images.values()
    ]
    checked = map_images(image_item, items, len(items), workers, "images")
    for image_id, (fault, _) in zip(images, checked, strict=True):
        if fault:
            report.problems.append(f"{where[image_id]}: {fault}")
    stats = dict(zip(images, (s for _, s in checked), strict=True))
    report.image_stats = np.array([stats[i] for i in sorted(images)], np.int64).reshape(-1, 2)

    masks = report.masks = instances.encode_masks(workers)
    anns = instances.annotations
    empty = masks.area == 0
    for k in np.flatnonzero(masks.clipped | empty).tolist():
        ann = anns[k]
        image = images[ann["image_id"]]
        if masks.clipped[k]:
            report.problems.append(
                f"annotation {ann['id']}: polygon reaches outside {where[ann['image_id']]} "
                f"({image['width']}x{image['height']})"
            )
        if empty[k]:
            report.problems.append(
                f"annotation {ann['id']} on {where[ann['image_id']]}: empty mask"
            )
    _stale_fields(anns, masks, ~empty, report.warnings)

    categories = {i: str(c.get("name", i)) for i, c in instances.categories.items()}
    category = np.array([a["category_id"] for a in anns], np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    report.images = len(images)
    report.empty_images = len(images) - len({a["image_id"] for a in anns})
    report.summary = _summary(category[~empty], crowd[~empty], masks.area[~empty], categories)
    unused = len(set(categories) - set(category[~empty].tolist()))
    if unused:
        report.warnings["categories without annotations"] += unused
    return report


def _stale_fields(
    anns: list[dict], masks: MaskTable, nonempty: np.ndarray, warnings: Counter
) -> None:
    """Count the stored areas and boxes that disagree with their (non-empty) masks."""
    area_off, box_off = stale_fields(anns, masks)
    stale_area, stale_box = int((nonempty & area_off).sum()), int((nonempty & box_off).sum())
    if stale_area:
        warnings["area differs from the mask area by more than 1%"] += stale_area
    if stale_box:
        warnings["bbox differs from the mask's tight box by more than 1 px"] += stale_box


def _summary(
    category: np.ndarray, crowd: np.ndarray, area: np.ndarray, categories: dict[int, str]
) -> pd.DataFrame:
    """Per category: instances (non-crowd), crowd, and the instances' COCO size classes."""
    ids = sorted(categories)
    at = np.searchsorted(ids, category)
    size = np.digitize(area, [SMALL_AREA, LARGE_AREA])  # 0 small, 1 medium, 2 large

    def count(where: np.ndarray) -> np.ndarray:
        return np.bincount(at[where], minlength=len(ids)).astype(np.int64)

    columns = {"instances": count(~crowd), "crowd": count(crowd)}
    columns |= {name: count(~crowd & (size == k)) for k, name in enumerate(SIZE_CLASSES)}
    table = pd.DataFrame(columns, index=pd.Index(ids, name="category_id"))
    table.insert(0, "name", [categories[c] for c in ids])
    table.loc["total"] = ["", *table.iloc[:, 1:].sum().tolist()]
    return table


def record(report: CheckReport) -> AnnotationStore | str:
    """Record a passed check beside its JSON (`ifcn.data.store`); the record, or why it could
    not be written (the stages then validate the JSON themselves)."""
    return check_record(
        report.instances, report.masks, checked_by="ifcn data check", image_stats=report.image_stats
    )


def forget(json_path: str | Path) -> None:
    """Remove the record of an earlier check of a JSON that fails its check now."""
    proof_path(json_path).unlink(missing_ok=True)


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
