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

import cv2
import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torchvision.ops import nms as box_nms

from ifcn import atomic
from ifcn.config import load_config
from ifcn.data.coco import load_image, resize_image
from ifcn.distributed import resolve_device
from ifcn.errors import IfcnError
from ifcn.infer import image_tensor, load_model, rank_windows, read_image_table, window_masks
from ifcn.proposals_io import Proposals
from ifcn.windows import STRIDE, window_boxes


def distinct_colours(count: int) -> np.ndarray:
    """[count, 3] uint8 RGB colours, neighbours far apart (tab10, then evenly spaced hues)."""
    base = [matplotlib.colors.to_rgb(c) for c in matplotlib.colormaps["tab10"].colors]
    extra = [
        matplotlib.colors.hsv_to_rgb(((i * 0.618034) % 1.0, 0.85, 0.95))
        for i in range(max(0, count - len(base)))
    ]
    return (np.asarray((base + extra)[:count]).reshape(-1, 3) * 255).round().astype(np.uint8)


def draw_proposals(
    image: np.ndarray, masks: np.ndarray, scores: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
    """The image (RGB uint8) with binary masks [n, H, W] tinted and outlined, best on top.

    Each mask is labelled with its score at the top-left of its box.
    """
    out = image.astype(np.float32).copy()
    colours = distinct_colours(len(masks))
    thickness = max(1, round(min(image.shape[:2]) / 200))
    font = max(0.35, min(image.shape[:2]) / 700)
    labels = []
    for i in reversed(range(len(masks))):
        region = masks[i].astype(bool)
        if not region.any():
            continue
        colour = colours[i].astype(np.float32)
        out[region] = out[region] * (1 - alpha) + colour * alpha
        contours, _ = cv2.findContours(
            region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, colour.tolist(), thickness)
        ys, xs = np.nonzero(region)
        labels.append((int(xs.min()), int(ys.min()), f"{float(scores[i]):.2f}", colours[i]))
    out = out.clip(0, 255).astype(np.uint8)
    for x, y, text, colour in labels:
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        y = max(y, h + base)
        cv2.rectangle(out, (x, y - h - base), (x + w, y), colour.tolist(), -1)
        cv2.putText(out, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1)
    return out


def draw_score_maps(
    image: np.ndarray,
    score_maps: np.ndarray,
    instances: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
) -> np.ndarray:
    """Fig. 5 of the paper as an RGB array.

    `score_maps` [k², h, w] are the instance-sensitive probabilities (map i·k + j: relative
    position row i, column j); `instances` [n, S, S] are masks assembled for windows `boxes`
    [n, 4] (pixels of `image`, the network's input) with objectness `scores` [n].
    """
    kk = score_maps.shape[0]
    k = int(round(kk**0.5))
    n = len(instances)
    colours = distinct_colours(max(n, 1)) / 255.0
    fig = Figure(figsize=(1.6 * k + 2.2 * max(n, 2), 1.4 * k + 0.8), dpi=100, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[k, 1.1 * max(n, 2)])
    left.suptitle(f"instance-sensitive score maps (k = {k})")
    grid = left.subplots(k, k, squeeze=False)
    for c in range(kk):
        ax = grid[c // k, c % k]
        ax.imshow(score_maps[c], cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"({c // k}, {c % k})", fontsize=8)
        ax.set_axis_off()
    top, bottom = right.subfigures(2, 1, height_ratios=[1.6, 1])
    ax = top.subplots()
    ax.imshow(image)
    for i in range(n):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2, ec=colours[i]))
    ax.set_title("top-scoring windows")
    ax.set_axis_off()
    cells = bottom.subplots(1, max(n, 1), squeeze=False)[0]
    for i, ax in enumerate(cells):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(instances[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.add_patch(
            Rectangle((-0.5, -0.5), instances.shape[2], instances.shape[1],
                      fill=False, lw=3, ec=colours[i])
        )  # fmt: skip
        ax.set_title(f"{float(scores[i]):.2f}", fontsize=9)
    bottom.suptitle("assembled instances", fontsize=10)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB array as PNG through a temporary file (no partial picture on a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise IfcnError("cannot encode the picture as PNG", path)
    return atomic.write_bytes(path, data.tobytes())


@torch.inference_mode()
def score_map_picture(
    model: torch.nn.Module,
    image: np.ndarray,
    short_side: int,
    max_size: int | None = None,
    windows: int = 4,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """`draw_score_maps` of the network on `image` at one scale; distinct top windows."""
    resized, _ = resize_image(image, short_side, max_size)
    out = model(image_tensor(resized, device))
    if "scores" not in out:
        raise IfcnError("the ~DeepMask head has no instance-sensitive score maps to draw")
    m = int(model.m)
    tops, logits = rank_windows(out["objectness"][0, 0], m, 2000)
    boxes = window_boxes(tops, m, 1.0, STRIDE)
    chosen = box_nms(boxes.float().cpu(), logits.float().cpu(), 0.5)[:windows].to(tops.device)
    instances = window_masks(model, out, tops[chosen], m, int(model.k))
    return draw_score_maps(
        resized,
        out["scores"][0].sigmoid().float().cpu().numpy(),
        instances.float().cpu().numpy(),
        boxes[chosen].cpu().numpy(),
        logits[chosen].sigmoid().float().cpu().numpy(),
    )


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
