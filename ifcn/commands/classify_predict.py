"""`ifcn classify predict`: label proposals, giving instance segmentation (DESIGN §9).

Per image: one forward pass of the backbone at `classify.test_scale`, the best `top_n`
proposals classified, then for each class the proposals scoring at least `score_threshold`
go through greedy mask NMS (pycocotools mask IoU above `nms_iou` suppresses the lower score),
and the best `detections_per_image` over all classes are kept. The output is a COCO segm
results JSON: `image_id`, `category_id`, `segmentation` (compressed RLE, counts as str) and
`score`, with no `bbox` key (`COCO.loadRes` would then take the box path and overwrite each
result's area with its box's). The prediction settings are the run's config's (`--config`,
its `classify` section; without it, the config the classifier was trained under), the flags
override them; the classifier itself comes from its checkpoint. Images are decoded and
resized, and the proposals' masks resized to the RoI grids, in DataLoader workers (`--workers`,
classify.workers; pinned memory on CUDA), so the network does not wait for them.
"""

from __future__ import annotations

import argparse

from ifcn.classify.prediction import load_classifier, run_prediction
from ifcn.config import command_config, config_option, override_option
from ifcn.training.distributed import resolve_device


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn classify predict", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_option(parser)
    parser.add_argument(
        "--checkpoint", required=True, help="model_final.pt of `ifcn classify train`"
    )
    parser.add_argument("--proposals", required=True, help="proposals.h5 of the images")
    parser.add_argument("--images", required=True, help="COCO JSON listing the images")
    parser.add_argument("--image-root", help="folder of the images (default: data.val_images)")
    override_option(parser, "--top-n", "classify.top_n", "proposals classified per image")
    override_option(
        parser, "--test-scale", "classify.test_scale", "shorter side the image is resized to"
    )
    override_option(
        parser, "--score-threshold", "classify.score_threshold", "lowest class score kept"
    )
    override_option(parser, "--nms-iou", "classify.nms_iou", "mask IoU above which NMS suppresses")
    override_option(
        parser, "--detections-per-image", "classify.detections_per_image", "results kept per image"
    )
    override_option(parser, "--workers", "classify.workers", "DataLoader processes decoding images")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", required=True, help="COCO segm results JSON to write")
    return parser


def main(args: argparse.Namespace) -> int:
    # the run's config first: a bad one fails before the classifier is loaded
    config = command_config(args) if args.config is not None else None
    model, state = load_classifier(args.checkpoint, resolve_device(args.device))
    if config is None:  # the settings the classifier was trained under, with the flags
        config = command_config(args, base=state["config"])
    count = run_prediction(
        model,
        state,
        args.checkpoint,
        args.proposals,
        args.images,
        args.out,
        config,
        image_root=args.image_root,
    )
    print(f"wrote {count} results to {args.out}")
    return 0
