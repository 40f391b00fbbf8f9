"""Ground truth for evaluation: the COCO instances JSON read once, through its check record
when it has one (`ifcn.data.store`), else through its validator
(`ifcn.data.instances.read_instances`), every mask made compressed RLE in bulk as
`Instances.rle` makes it one by one.

GTs are kept in COCOeval's order (by image, then category rank, then file order), because
COCOeval's matching breaks ties in IoU by that order. A GT whose mask is empty (a polygon that
covers no pixel) is kept, as COCOeval keeps it: an object no proposal can ever recall; `empty`
counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ifcn.data.instances import read_instances
from ifcn.data.store import AnnotationStore, read_checked


@dataclass
class GroundTruth:
    """What evaluation needs of a COCO instances JSON: sizes and non-crowd GTs per image."""

    path: Path
    sizes: dict[int, tuple[int, int]]  # image id -> (height, width)
    file_names: dict[int, str]  # image id -> file_name
    # image id -> [(compressed RLE, area, annotation id)], in COCOeval's order; the area is
    # the stored one, or the mask's where the file has none (COCOeval reads the same)
    objects: dict[int, list[tuple[dict, float, int]]]
    crowd: dict[int, int]  # image id -> number of crowd GTs
    category_rank: dict[int, int]  # category id -> position among the sorted category ids
    sha256: str  # of the file's bytes
    empty: dict[int, int]  # image id -> number of its non-crowd GTs whose mask is empty

    def rles(self, image_id: int) -> list[dict]:
        """The image's non-crowd GT masks as compressed RLEs, in COCOeval's order: the masks
        COCO.annToRLE makes (with polygon parts of fewer than 3 points left out)."""
        return [rle for rle, _, _ in self.objects[image_id]]


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read a COCO instances JSON: its check record, or the file validated."""
    store = read_checked(path)
    if store is not None:
        return _from_store(store)
    instances = read_instances(path)
    masks = instances.encode_masks()
    sizes = {i: (im["height"], im["width"]) for i, im in instances.images.items()}
    rows = [
        (a["image_id"], a["category_id"], bool(a.get("iscrowd")), a.get("area"), a["id"])
        for a in instances.annotations
    ]
    names = {i: im["file_name"] for i, im in instances.images.items()}
    return _ground_truth(
        instances.path, sizes, names, sorted(instances.categories), rows,
        masks.counts, masks.area.tolist(), instances.sha256,
    )  # fmt: skip


def _from_store(store: AnnotationStore) -> GroundTruth:
    ids = store["image_id"].tolist()
    shapes = zip(store["height"].tolist(), store["width"].tolist(), strict=True)
    sizes = dict(zip(ids, shapes, strict=True))
    texts = store.checked_texts()
    image_of = np.repeat(np.arange(len(ids)), np.diff(store["ann_offset"])).tolist()
    stored = store["area"].tolist()
    rows = [
        (ids[i], c, bool(crowd), None if np.isnan(area) else area, ann_id)
        for i, c, crowd, area, ann_id in zip(
            image_of, store["category_id"].tolist(), store["iscrowd"].tolist(), stored,
            store["ann_id"].tolist(), strict=True,
        )
    ]  # fmt: skip
    order = np.argsort(store["file_order"], kind="stable").tolist()  # back to file order
    names = dict(zip(ids, store.file_names(), strict=True))
    return _ground_truth(
        store.json_path, sizes, names, sorted(int(c["id"]) for c in store.categories),
        [rows[k] for k in order], [texts[k] for k in order],
        store["mask_area"][order].tolist(), store.json_sha256,
    )  # fmt: skip


def _ground_truth(
    path: Path,
    sizes: dict[int, tuple[int, int]],
    file_names: dict[int, str],
    category_ids: list[int],
    rows: list[tuple[int, int, bool, float | None, int]],
    texts: list[bytes],
    mask_areas: list[int],
    sha256: str,
) -> GroundTruth:
    """GroundTruth of annotation rows (image id, category id, crowd, stored area, id) in file
    order, with their masks' texts and areas."""
    category_rank = {c: r for r, c in enumerate(category_ids)}
    crowd = dict.fromkeys(sizes, 0)
    empty = dict.fromkeys(sizes, 0)
    kept = []
    for k, (image_id, category_id, is_crowd, area, ann_id) in enumerate(rows):
        if is_crowd:
            crowd[image_id] += 1
            continue
        empty[image_id] += mask_areas[k] == 0
        rle = {"size": list(sizes[image_id]), "counts": texts[k].decode()}
        area = float(mask_areas[k] if area is None else area)
        kept.append((image_id, category_rank[category_id], k, rle, area, ann_id))
    kept.sort(key=lambda r: (r[0], r[1], r[2]))
    objects: dict[int, list] = {i: [] for i in sizes}
    for image_id, _, _, rle, area, ann_id in kept:
        objects[image_id].append((rle, area, ann_id))
    return GroundTruth(Path(path), sizes, file_names, objects, crowd, category_rank, sha256, empty)
