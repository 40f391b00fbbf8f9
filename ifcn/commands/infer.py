"""`ifcn infer`: multi-scale inference into candidates.h5 (paper §3.3 "Inference", DESIGN §6).

For every image: the network at every scale, the top windows of each scale by objectness, and
what their masks are made of (the score maps, or the ~DeepMask head's masks), into the
candidates file that `ifcn nms` turns into proposals. The images are those of a COCO JSON
(`--images`; a job may be one shard of its sorted ids) or every image in a folder
(`--image-dir`, e.g. your own photos). Images are decoded in DataLoader workers.

examples:
  ifcn infer --config results/run/config.yaml --checkpoint results/run/train/model_final.pt \
      --images val.json --image-root images --shard 0/4 --out candidates-0.h5
  ifcn infer --config C --checkpoint M --image-dir my_photos --out candidates.h5
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ifcn.config import command_config, config_json, config_option, override_option
from ifcn.data.folder import image_table_from_folder
from ifcn.data.instances import read_image_table
from ifcn.errors import IfcnError
from ifcn.model import load_model
from ifcn.proposals.inference import run_inference
from ifcn.proposals.sharding import parse_shard, shard_ids
from ifcn.provenance import file_sha256
from ifcn.training.distributed import resolve_device


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn infer", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_option(parser, required=True)
    parser.add_argument("--checkpoint", required=True, help="model_final.pt of `ifcn train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="COCO JSON listing the images")
    source.add_argument(
        "--image-dir", help="folder of images (searched recursively) instead of a COCO JSON"
    )
    parser.add_argument(
        "--image-root", help="folder of the --images files (default: data.val_images)"
    )
    parser.add_argument(
        "--shard", default="0/1", help="i/n: run chunk i (0-based) of n of the sorted image ids"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    override_option(parser, "--workers", "infer.workers", "processes decoding images (0: none)")
    parser.add_argument("--out", required=True, help="candidates.h5 to write")
    return parser


def main(args: argparse.Namespace) -> int:
    config = command_config(args)
    try:
        index, count = parse_shard(args.shard)
    except ValueError as exc:
        raise IfcnError(str(exc)) from None
    if Path(args.out).is_dir():
        raise IfcnError("is a folder; give a file name to write", args.out)
    device = resolve_device(args.device)
    if args.image_dir is not None:
        table, image_root, dataset = (
            image_table_from_folder(args.image_dir),
            args.image_dir,
            args.image_dir,
        )
        digest = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()
    else:
        table, dataset = read_image_table(args.images), args.images
        image_root = args.image_root or config["data"]["val_images"]
        digest = file_sha256(args.images)
    chosen = {i: table[i] for i in shard_ids(table, index, count)}
    model = load_model(config, args.checkpoint, device)
    infer_cfg = config["infer"]
    attrs = {
        "config": config_json(config),
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "dataset": str(dataset),
        # the images JSON's bytes, or the folder's image list: which images these proposals are of
        "dataset_sha256": digest,
        "scales": [int(s) for s in infer_cfg["scales"]],
        "max_size": int(infer_cfg["max_size"] or 0),
        "k": int(model.k),
        "m": int(model.m),
        "head": str(config["model"]["head"]),
        "pre_nms_topk": int(infer_cfg["pre_nms_topk"]),
        "shard": f"{index}/{count}",
    }
    run = run_inference(model, chosen, image_root, args.out, attrs, infer_cfg, device)
    share = run.data_seconds / run.seconds if run.seconds else 0.0
    print(
        f"inferred {run.images} images (shard {index}/{count}) in {run.seconds:.1f} s, "
        f"{share:.0%} of it waiting for images: {args.out}"
    )
    return 0
