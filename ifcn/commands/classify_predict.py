"""`ifcn classify predict`: label proposals, giving instance segmentation (DESIGN §9).

Per image: one forward pass of the backbone at `classify.test_scale`, the best `top_n`
proposals classified, then for each class the proposals scoring at least `score_threshold`
go through greedy mask NMS (pycocotools mask IoU above `nms_iou` suppresses the lower score),
and the best `detections_per_image` over all classes are kept. The output is a COCO segm
results JSON: `image_id`, `category_id`, `segmentation` (compressed RLE, counts as str) and
`score`, with no `bbox` key (`COCO.loadRes` would then take the box path and overwrite each
result's area with its box's). Settings come from the checkpoint's config unless overridden.
Images are decoded and resized, and the proposals' masks resized to the RoI grids, in
DataLoader workers (`--workers`, classify.workers; pinned memory on CUDA), so the network does
not wait for them.
"""

from __future__ import annotations

import argparse

from ifcn.classify.prediction import OVERRIDABLE, run_prediction


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn classify predict", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint", required=True, help="model_final.pt of `ifcn classify train`"
    )
    parser.add_argument("--proposals", required=True, help="proposals.h5 of the images")
    parser.add_argument("--images", required=True, help="COCO JSON listing the images")
    parser.add_argument("--image-root", help="folder of the images (default: data.val_images)")
    parser.add_argument("--top-n", type=int, help="proposals classified per image")
    parser.add_argument("--test-scale", type=int, help="shorter side the image is resized to")
    parser.add_argument("--score-threshold", type=float, help="lowest class score kept")
    parser.add_argument("--nms-iou", type=float, help="mask IoU above which NMS suppresses")
    parser.add_argument("--detections-per-image", type=int, help="results kept per image")
    parser.add_argument(
        "--workers", type=int, help="DataLoader processes decoding images (classify.workers)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", required=True, help="COCO segm results JSON to write")
    return parser


def main(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, key) for key in OVERRIDABLE}
    count = run_prediction(
        args.checkpoint,
        args.proposals,
        args.images,
        args.out,
        image_root=args.image_root,
        overrides=overrides,
        device_name=args.device,
    )
    print(f"wrote {count} results to {args.out}")
    return 0
