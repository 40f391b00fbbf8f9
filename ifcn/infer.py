"""`ifcn infer`: multi-scale inference into candidates.h5 (paper §3.3 "Inference", DESIGN §6).

At every scale (shorter side) the network runs once. Objectness does not depend on the mask, so
the windows are ranked first and only the top `pre_nms_topk` of each scale are assembled
(`assemble_sparse`), which equals dense assembling followed by the same selection (tested) at a
fraction of the memory. Each kept window stores its m×m mask probabilities, its box in
original-image pixels (`ifcn.windows.window_boxes`), its objectness logit and its scale index.

`infer_image` is the core: it takes any module with the model's forward contract
(``images [B, 3, H, W] → {"scores": [B, k², h, w], "objectness": [B, 1, h, w], ...}``), so
tests plug in hand-made score maps. A job may be one shard of the sorted image ids.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ifcn import checkpoint
from ifcn.assemble import assemble_sparse
from ifcn.candidates import CandidateWriter, ImageCandidates, parse_shard, shard_ids
from ifcn.config import config_json, load_config
from ifcn.data.coco import IMAGENET_MEAN, IMAGENET_STD, load_image, resize_image
from ifcn.data.cocojson import load_json, require_coco_shape
from ifcn.distributed import resolve_device
from ifcn.errors import IfcnError
from ifcn.model import build_model
from ifcn.windows import STRIDE, top_left_of_cell, window_boxes


def image_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """RGB uint8 (H, W, 3) → [1, 3, H, W], normalised exactly as the training samples are."""
    pixels = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return tensor[None].to(device)


def mask_size(model: nn.Module, m: int) -> int:
    """Side of the stored masks: m for the assembled instances, the ~DeepMask head's own side."""
    head = getattr(model, "mask_head", None)
    return int(head.mask_size) if head is not None else int(m)


def rank_windows(objectness: Tensor, m: int, topk: int) -> tuple[Tensor, Tensor]:
    """Top-left cells [n, 2] and logits [n] of the `topk` best windows of an [h, w] map."""
    width = objectness.shape[-1]
    flat = objectness.reshape(-1)
    logits, index = flat.topk(min(topk, flat.numel()))
    cells = torch.stack([index // width, index % width], dim=1)
    return top_left_of_cell(cells, m), logits


def window_masks(model: nn.Module, out: dict[str, Tensor], tops: Tensor, m: int, k: int | None):
    """Mask probabilities [n, S, S] of the windows with top-left cells `tops` (one image)."""
    if "scores" in out:
        scores = out["scores"][0]
        if k is not None and scores.shape[0] != k * k:
            raise ValueError(f"the model gives {scores.shape[0]} score maps, expected k²={k * k}")
        return assemble_sparse(scores, tops, m, fill=float("-inf")).sigmoid()
    batch_index = torch.zeros(len(tops), dtype=torch.long, device=tops.device)
    return model.mask_head.forward_windows(out["features"], batch_index, tops).sigmoid()


@torch.inference_mode()
def infer_image(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[int],
    m: int,
    k: int | None = None,
    max_size: int | None = None,
    pre_nms_topk: int = 1000,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Candidates of one RGB uint8 image over all scales, best window first within each scale.

    Returns masks (n, S, S) float16 probabilities, boxes (n, 4) float32 window boxes in
    original-image pixels, objectness (n,) float32 logits and scale (n,) int8 indices.
    """
    parts: list[tuple[Tensor, Tensor, Tensor, int]] = []
    for index, short_side in enumerate(scales):
        resized, scale = resize_image(image, int(short_side), max_size)
        out = model(image_tensor(resized, device))
        tops, logits = rank_windows(out["objectness"][0, 0], m, pre_nms_topk)
        masks = window_masks(model, out, tops, m, k)
        boxes = window_boxes(tops, m, scale, STRIDE)
        parts.append((masks.half().cpu(), boxes.cpu(), logits.float().cpu(), index))
    return {
        "masks": torch.cat([p[0] for p in parts]).numpy(),
        "boxes": torch.cat([p[1] for p in parts]).numpy().astype(np.float32),
        "objectness": torch.cat([p[2] for p in parts]).numpy(),
        "scale": np.concatenate([np.full(len(p[2]), p[3], np.int8) for p in parts]),
    }


def read_image_table(json_path: str | Path) -> dict[int, dict]:
    """Image entries of a COCO JSON by id; IfcnError naming the file if they are malformed."""
    data = load_json(json_path)
    require_coco_shape(data, json_path)
    table: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        try:
            image_id, height, width = img["id"], int(img["height"]), int(img["width"])
            if type(image_id) is not int or not isinstance(img["file_name"], str):
                raise ValueError
            if height < 1 or width < 1:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise IfcnError(
                f"images[{i}] needs an integer id, a file_name and a positive height and width",
                json_path,
            ) from None
        if image_id in table:
            raise IfcnError(f"image id {image_id} appears twice", json_path)
        table[image_id] = {"file_name": img["file_name"], "height": height, "width": width}
    return table


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(config: dict, checkpoint_path: str | Path, device: torch.device) -> nn.Module:
    """The config's network with the checkpoint's weights; IfcnError if they do not belong."""
    state = checkpoint.load(checkpoint_path)
    checkpoint.check_compatible(state, config, checkpoint_path)
    model = build_model({**config["model"], "pretrained": False})
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise IfcnError(
            f"weights do not fit the config's model ({first})", checkpoint_path
        ) from None
    return model.to(device).eval()


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
