"""`ifcn viz`: pictures of proposals and of the instance-sensitive score maps.

`--pictures N` draws the report's pictures of the first N validation images that show objects
(the workflow's `figures` rule): each object's best proposal with the missed objects outlined
(the paper's Fig. 8) and the k² score maps with the instances assembled from them (Fig. 5),
indexed with their captions in figures.json. `--image-id ID` draws one image: its top proposals
each in its own colour with its score, and its score maps. `--each` draws the top proposals of
every image of --proposals (images without annotations, e.g. of `ifcn infer --image-dir`),
needing neither the model nor a COCO JSON.

Example: ifcn viz --config results/synthetic/config.yaml --checkpoint
results/synthetic/train/model_final.pt --images resources/synthetic/val.json --proposals
results/synthetic/val/proposals.h5 --pictures 3 --out results/synthetic/figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.config import (
    FROM_CONFIG,
    command_config,
    config_option,
    override_option,
    schema_type,
)
from ifcn.errors import IfcnError
from ifcn.reporting.pictures import draw_folder, draw_image, draw_pictures


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn viz",
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_option(parser)
    parser.add_argument("--checkpoint", help="model_final.pt of `ifcn train` (not for --each)")
    parser.add_argument("--images", help="COCO JSON listing the images (not for --each)")
    parser.add_argument("--image-root", help="folder of the images (default: data.val_images)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--image-id", type=int, help="draw this image")
    override_option(
        which, "--pictures", "report.pictures",
        "draw the report's pictures of the first N images (N from the config when not given)",
        nargs="?", const=FROM_CONFIG, metavar="N",
    )  # fmt: skip
    which.add_argument(
        "--each", action="store_true", help="draw the top proposals of every image of --proposals"
    )
    parser.add_argument("--proposals", help="proposals.h5 of the images (needed by --pictures)")
    override_option(
        parser, "--top-n", "predict.pictures", "proposals drawn per image (--image-id, --each)"
    )
    parser.add_argument(
        "--scale", type=schema_type("infer.scales"), help="shorter side for the score maps "
        "(--image-id; an infer.scales value; default: the infer.scales entry nearest the image's "
        "own)",
    )  # fmt: skip
    parser.add_argument(
        "--windows", type=int, choices=range(1, 17), default=4, metavar="1..16",
        help="assembled instances shown",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    return parser


def main(args: argparse.Namespace) -> int:
    if not args.each:
        missing = [
            f"--{name}" for name in ("config", "checkpoint", "images") if not getattr(args, name)
        ]
        if missing:
            raise IfcnError(f"--pictures and --image-id need {', '.join(missing)}")
    config = command_config(args)
    top_n = config["predict"]["pictures"]
    if top_n < 1 and args.pictures is None:
        raise IfcnError(f"--top-n must be 1 or more, not {top_n}")
    if args.each:
        if not (args.proposals and args.image_root):
            raise IfcnError("--each needs --proposals and --image-root (the images' folder)")
        for path in draw_folder(Path(args.proposals), Path(args.image_root), Path(args.out),
                                top_n):  # fmt: skip
            print(path)
        return 0
    image_root = Path(args.image_root or config["data"]["val_images"])
    out_dir = Path(args.out)
    if args.pictures is not None:
        if not args.proposals:
            raise IfcnError("--pictures needs --proposals (the proposals of --images)")
        pictures = draw_pictures(
            config,
            out_dir,
            config["report"]["pictures"],
            Path(args.images),
            image_root,
            Path(args.proposals),
            Path(args.checkpoint),
            args.device,
        )
        written = [picture.path for picture in pictures] + [out_dir / "figures.json"]
    else:
        written = draw_image(
            config,
            Path(args.checkpoint),
            Path(args.images),
            image_root,
            args.image_id,
            out_dir,
            Path(args.proposals) if args.proposals else None,
            top_n,
            args.scale,
            args.windows,
            args.device,
        )
    for path in written:
        print(path)
    return 0
