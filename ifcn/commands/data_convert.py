"""`ifcn data convert`: a dataset in its own format -> COCO instances JSON + its image root.

Everything downstream reads only the COCO JSON (DESIGN §3). The JSON's `info.image_root` records
the folder its file names are relative to (relative to the JSON's own folder); images are not
copied. What the conversion changed is printed and kept in `info.conversion_notes`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ifcn.data.convert import FORMATS, convert, write_converted
from ifcn.data.formats.coco import AREA_BBOX
from ifcn.errors import IfcnError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a dataset to COCO instances JSON (RLE masks, area = mask area).",
        add_help=add_help,
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="source format")
    parser.add_argument(
        "--root",
        type=Path,
        help="dataset folder: VOC2012 (JPEGImages, SegmentationObject, SegmentationClass, "
        "ImageSets), SBD benchmark_RELEASE/dataset, PennFudanPed, or a COCO/Roboflow folder",
    )
    parser.add_argument(
        "--split",
        help="voc: ImageSets/Segmentation/NAME.txt; sbd: NAME.txt; pennfudan: train|val|all; "
        "coco: annotations/instances_NAME.json or NAME/_annotations.coco.json",
    )
    parser.add_argument("--out", type=Path, required=True, help="COCO JSON to write")
    parser.add_argument(
        "--json", type=Path, help="coco: the input JSON (instead of --root/--split)"
    )
    parser.add_argument("--images", type=Path, help="coco: folder the input file names are in")
    parser.add_argument(
        "--first-n", type=int, help="coco: keep the first N image ids in sorted order"
    )
    parser.add_argument(
        "--exclude", type=Path, help="voc/sbd/pennfudan: drop the images named in this list file"
    )
    parser.add_argument(
        "--image-list",
        type=Path,
        help="sbd: convert the images named in this list (e.g. VOC2012/ImageSets/Main/train.txt, "
        "the paper's split) instead of --split's; those SBD does not annotate are left out",
    )
    parser.add_argument(
        "--area-bbox",
        choices=AREA_BBOX,
        help="coco: keep each annotation's area and bbox as the file publishes them, or compute "
        "them from its mask (default: published for a JSON in COCO's own layout, "
        "ROOT/annotations/instances_SPLIT.json; mask for exports)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes over masks and images",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.first_n is not None and args.first_n < 1:
        raise IfcnError(f"--first-n must be at least 1, got {args.first_n}")
    converted = convert(
        args.format,
        args.root,
        args.split,
        json_path=args.json,
        images=args.images,
        first_n=args.first_n,
        exclude=args.exclude,
        image_list=args.image_list,
        workers=args.workers,
        area_bbox=args.area_bbox,
    )
    recorded = write_converted(converted, args.out, workers=args.workers)
    d = converted.dataset
    print(
        f"wrote {args.out}: {len(d['images'])} images, {len(d['annotations'])} annotations, "
        f"{len(d['categories'])} categories"
    )
    print(f"image root: {converted.image_root}")
    for note in converted.notes:
        print(f"changed: {note}" if args.format == "coco" else f"note: {note}")
    if isinstance(recorded, str):
        print(f"note: the check is not recorded ({recorded}); stages will validate it again")
    else:
        print(f"recorded the check in {recorded.path}")
    return 0
