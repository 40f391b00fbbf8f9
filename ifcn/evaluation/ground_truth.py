"""Ground truth for evaluation: the COCO instances JSON read once through its validator
(`ifcn.data.instances.read_instances`), the masks converted per image when they are needed (in
the worker that scores the image) as `Instances.rle` converts them.

GTs are kept in COCOeval's order (by image, then category rank, then file order), because
COCOeval's matching breaks ties in IoU by that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ifcn.data.instances import read_instances
from ifcn.data.masks import segmentation_to_rle


@dataclass
class GroundTruth:
    """What evaluation needs of a COCO instances JSON: sizes and non-crowd GTs per image."""

    path: Path
    sizes: dict[int, tuple[int, int]]  # image id -> (height, width)
    file_names: dict[int, str]  # image id -> file_name
    # image id -> [(segmentation, area or None, annotation id)], in COCOeval's order
    objects: dict[int, list[tuple[Any, float | None, int]]]
    crowd: dict[int, int]  # image id -> number of crowd GTs
    category_rank: dict[int, int]  # category id -> position among the sorted category ids
    sha256: str  # of the file's bytes

    def rles(self, image_id: int) -> list[dict]:
        """The image's non-crowd GT masks as compressed RLEs, in COCOeval's order: the masks
        COCO.annToRLE makes (with polygon parts of fewer than 3 points left out)."""
        h, w = self.sizes[image_id]
        return [segmentation_to_rle(s, h, w) for s, _, _ in self.objects[image_id]]


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read and validate a COCO instances JSON; the masks are converted later, per image."""
    instances = read_instances(path)
    sizes = {i: (im["height"], im["width"]) for i, im in instances.images.items()}
    file_names = {i: im["file_name"] for i, im in instances.images.items()}
    category_rank = {c: r for r, c in enumerate(sorted(instances.categories))}
    rows = []
    crowd = dict.fromkeys(sizes, 0)
    for k, ann in enumerate(instances.annotations):
        image_id = ann["image_id"]
        if ann.get("iscrowd"):
            crowd[image_id] += 1
            continue
        area = ann.get("area")
        row = (image_id, category_rank[ann["category_id"]], k, ann["segmentation"], area, ann["id"])
        rows.append(row)
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    objects: dict[int, list] = {i: [] for i in sizes}
    for image_id, _, _, segmentation, area, ann_id in rows:
        objects[image_id].append((segmentation, None if area is None else float(area), ann_id))
    return GroundTruth(
        instances.path, sizes, file_names, objects, crowd, category_rank, instances.sha256
    )
