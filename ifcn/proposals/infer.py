"""`ifcn infer`: multi-scale inference into candidates.h5 (paper §3.3 "Inference", DESIGN §6).

Each kept window stores its m×m mask probabilities, its box in original-image pixels, its
objectness logit and its scale index (`ifcn.proposals.inference`). A job may be one shard of
the sorted image ids.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ifcn.config import config_json, load_config
from ifcn.data.cocojson import read_image_table
from ifcn.data.image import load_image
from ifcn.distributed import resolve_device
from ifcn.errors import IfcnError
from ifcn.model import load_model
from ifcn.proposals.candidates import CandidateWriter, ImageCandidates
from ifcn.proposals.inference import infer_image, mask_size
from ifcn.proposals.sharding import parse_shard, shard_ids
from ifcn.provenance import file_sha256


def _load_checked(path: Path, height: int, width: int) -> np.ndarray:
    image = load_image(path)
    if image.shape[:2] != (height, width):
        raise IfcnError(
            f"decoded size {image.shape[0]}x{image.shape[1]} differs from {height}x{width} "
            "in the images JSON",
            path,
        )
    return image


def run_inference(
    model: nn.Module,
    images: dict[int, dict],
    image_root: str | Path,
    out: str | Path,
    attrs: dict,
    infer_cfg: dict,
    device: torch.device,
    show_progress: bool = True,
) -> int:
    """Write the candidates of `images` (id → entry) to `out`; returns the number of images."""
    image_root = Path(image_root)
    ids = sorted(images)
    paths = [image_root / images[i]["file_name"] for i in ids]
    for path in paths:
        if not path.is_file():
            raise IfcnError("image file not found (listed in the images JSON)", path)
    m, k = int(model.m), int(model.k)
    with (
        CandidateWriter(out, attrs, mask_size(model, m)) as writer,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        pending = None
        for n, image_id in enumerate(tqdm(ids, desc="infer", disable=not show_progress)):
            entry = images[image_id]
            if pending is None:
                pending = pool.submit(_load_checked, paths[n], entry["height"], entry["width"])
            image = pending.result()
            if n + 1 < len(ids):  # decode the next image while the network runs
                following = images[ids[n + 1]]
                pending = pool.submit(
                    _load_checked, paths[n + 1], following["height"], following["width"]
                )
            found = infer_image(
                model,
                image,
                infer_cfg["scales"],
                m,
                k,
                infer_cfg["max_size"],
                infer_cfg["pre_nms_topk"],
                device,
            )
            writer.add(
                ImageCandidates(
                    image_id=image_id,
                    file_name=entry["file_name"],
                    height=entry["height"],
                    width=entry["width"],
                    **found,
                )
            )
    return len(ids)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn infer", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--checkpoint", required=True, help="model_final.pt of `ifcn train`")
    parser.add_argument("--images", required=True, help="COCO JSON listing the images")
    parser.add_argument("--image-root", help="folder of the images (default: data.val_images)")
    parser.add_argument(
        "--shard", default="0/1", help="i/n: run chunk i (0-based) of n of the sorted image ids"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", required=True, help="candidates.h5 to write")
    return parser


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        index, count = parse_shard(args.shard)
    except ValueError as exc:
        raise IfcnError(str(exc)) from None
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise IfcnError(str(exc)) from None
    table = read_image_table(args.images)
    chosen = {i: table[i] for i in shard_ids(table, index, count)}
    model = load_model(config, args.checkpoint, device)
    infer_cfg = config["infer"]
    attrs = {
        "config": config_json(config),
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "dataset": str(args.images),
        "scales": [int(s) for s in infer_cfg["scales"]],
        "max_size": int(infer_cfg["max_size"] or 0),
        "k": int(model.k),
        "m": int(model.m),
        "head": str(config["model"]["head"]),
        "pre_nms_topk": int(infer_cfg["pre_nms_topk"]),
        "shard": f"{index}/{count}",
    }
    image_root = args.image_root or config["data"]["val_images"]
    done = run_inference(model, chosen, image_root, args.out, attrs, infer_cfg, device)
    print(f"inferred {done} images (shard {index}/{count}): {args.out}")
    return 0
