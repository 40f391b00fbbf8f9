"""`ifcn data convert`: a dataset in its own format -> COCO instances JSON + its image root.

Everything downstream reads only the COCO JSON (DESIGN §3). The JSON's `info.image_root` records
the folder its file names are relative to (relative to the JSON's own folder); images are not
copied. What the conversion changed is printed and kept in `info.conversion_notes`. With
`--config`, `--split train|val` names the run's split and the dataset registry
(`ifcn.data.datasets`) gives the format, the folder, the dataset's own split and the output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.config import command_config, config_option, override_option
from ifcn.cpus import available_cpus
from ifcn.data.convert import FORMATS, convert, write_converted
from ifcn.data.datasets import SPLITS, convert_request
from ifcn.data.formats.coco import AREA_BBOX
from ifcn.errors import IfcnError

# flags that say what to convert, which --config says instead
_SOURCE_FLAGS = ("format", "root", "json", "images", "image_list")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a dataset to COCO instances JSON (RLE masks, area = mask area).",
        add_help=add_help,
    )
    config_option(parser)
    parser.add_argument("--format", choices=FORMATS, help="source format (without --config)")
    parser.add_argument(
        "--root",
        type=Path,
        help="dataset folder: VOC2012 (JPEGImages, SegmentationObject, SegmentationClass, "
        "ImageSets), SBD benchmark_RELEASE/dataset, PennFudanPed, or a COCO/Roboflow folder",
    )
    parser.add_argument(
        "--split",
        help="with --config: train or val, the run's split; else voc: "
        "ImageSets/Segmentation/NAME.txt; sbd: NAME.txt; pennfudan: train|val|all; "
        "coco: annotations/instances_NAME.json or NAME/_annotations.coco.json",
    )
    parser.add_argument(
        "--out", type=Path, help="COCO JSON to write (with --config: data.train_json/val_json)"
    )
    parser.add_argument(
        "--json", type=Path, help="coco: the input JSON (instead of --root/--split)"
    )
    parser.add_argument("--images", type=Path, help="coco: folder the input file names are in")
    override_option(
        parser, "--first-n", "data.first_n",
        "coco: keep the first N image ids in sorted order (from the config: of the val split)",
    )  # fmt: skip
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
        default=min(8, available_cpus()),
        help="processes over masks and images",
    )
    return parser


def _request(args: argparse.Namespace) -> tuple[dict, Path]:
    """What to convert and where to write it: from the flags, or the config and --split."""
    config = command_config(args)
    if args.config is None:
        if args.format is None or args.out is None:
            raise IfcnError("give --format and --out (or --config and --split train|val)")
        request = {"fmt": args.format, "root": args.root, "split": args.split}
        request |= {"json_path": args.json, "images": args.images, "image_list": args.image_list}
        return request | {"first_n": config["data"]["first_n"]}, args.out
    given = [f"--{name.replace('_', '-')}" for name in _SOURCE_FLAGS if getattr(args, name)]
    if given:
        raise IfcnError(
            f"{', '.join(given)}: the config says what to convert; drop --config or these"
        )
    if args.split not in SPLITS:
        raise IfcnError(f"with --config, --split is train or val, not {args.split!r}")
    request = convert_request(config["data"], args.split)
    request["root"] = Path(request["root"])
    if request["image_list"] is not None:
        request["image_list"] = Path(request["image_list"])
    if args.first_n is not None:
        request["first_n"] = config["data"]["first_n"]
    return request, args.out or Path(config["data"][f"{args.split}_json"])


def main(args: argparse.Namespace) -> int:
    request, out = _request(args)
    fmt = request.pop("fmt")
    converted = convert(
        fmt, request.pop("root"), request.pop("split"), exclude=args.exclude,
        workers=args.workers, area_bbox=args.area_bbox, **request,
    )  # fmt: skip
    recorded = write_converted(converted, out, workers=args.workers)
    d = converted.dataset
    print(
        f"wrote {out}: {len(d['images'])} images, {len(d['annotations'])} annotations, "
        f"{len(d['categories'])} categories"
    )
    print(f"image root: {converted.image_root}")
    for note in converted.notes:
        print(f"changed: {note}" if fmt == "coco" else f"note: {note}")
    if isinstance(recorded, str):
        print(f"note: the check is not recorded ({recorded}); stages will validate it again")
    else:
        print(f"recorded the check in {recorded.path}")
    return 0
