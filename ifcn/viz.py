"""`ifcn viz`: pictures of one image's proposals and of its instance-sensitive score maps.

(a) the top proposals of proposals.h5 drawn on the image, each mask in its own colour with its
score; (b) the k² instance-sensitive score maps (sigmoid) as a k×k grid of heat maps, beside
the image with a few top-scoring windows and the instances assembled from those maps (the
paper's Fig. 5). `draw_proposals` and `draw_score_maps` return RGB arrays so the report stage
draws the same pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifcn.config import load_config
from ifcn.data.cocojson import read_image_table
from ifcn.data.image import load_image
from ifcn.distributed import resolve_device
from ifcn.errors import IfcnError
from ifcn.model import load_model
from ifcn.pictures import draw_proposals, save_png, score_map_picture
from ifcn.proposals.format import Proposals


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn viz", description=__doc__, add_help=add_help)
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--checkpoint", required=True, help="model_final.pt of `ifcn train`")
    parser.add_argument("--images", required=True, help="COCO JSON listing the images")
    parser.add_argument("--image-root", help="folder of the images (default: data.val_images)")
    parser.add_argument("--image-id", type=int, required=True, help="image to draw")
    parser.add_argument("--proposals", help="proposals.h5 whose top proposals to draw")
    parser.add_argument("--top-n", type=int, default=10, help="proposals drawn")
    parser.add_argument(
        "--scale", type=int, help="shorter side for the score maps (default: the infer.scales "
        "entry nearest the image's own)",
    )  # fmt: skip
    parser.add_argument("--windows", type=int, default=4, help="assembled instances shown")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    return parser


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    table = read_image_table(args.images)
    if args.image_id not in table:
        raise IfcnError(f"no image with id {args.image_id}", args.images)
    entry = table[args.image_id]
    image_root = Path(args.image_root or config["data"]["val_images"])
    image = load_image(image_root / entry["file_name"])
    out_dir = Path(args.out)
    written = []
    if args.proposals:
        with Proposals(args.proposals) as proposals:
            if args.image_id not in proposals:
                raise IfcnError(f"no proposals for image {args.image_id}", args.proposals)
            masks = proposals.masks(args.image_id, args.top_n)
            scores = proposals.scores(args.image_id, args.top_n)
        if masks.shape[1:] != image.shape[:2]:
            raise IfcnError(
                f"proposals are {masks.shape[1]}x{masks.shape[2]}, the image "
                f"{image.shape[0]}x{image.shape[1]}",
                args.proposals,
            )
        picture = draw_proposals(image, masks, scores)
        written.append(save_png(picture, out_dir / f"image{args.image_id}_proposals.png"))
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise IfcnError(str(exc)) from None
    model = load_model(config, args.checkpoint, device)
    infer_cfg = config["infer"]
    short = min(image.shape[:2])
    scale = args.scale or min(infer_cfg["scales"], key=lambda s: abs(s - short))
    picture = score_map_picture(model, image, scale, infer_cfg["max_size"], args.windows, device)
    written.append(save_png(picture, out_dir / f"image{args.image_id}_score_maps.png"))
    for path in written:
        print(path)
    return 0
