"""The pictures of a run: proposals on images (the paper's Fig. 8) and score maps (Fig. 5).

Drawing functions return RGB uint8 arrays; `ifcn.reporting.plots.save_png` writes them
atomically. `draw_pictures` draws the report's pictures of the first validation images and
indexes them in figures.json (`ifcn viz --pictures`, the workflow's `figures` rule);
`draw_image` draws one image's top proposals and score maps (`ifcn viz --image-id`);
`draw_folder` the top proposals of every image of a proposals file, for photos without
annotations (`ifcn viz --each`), each picture named after its photo inside the output folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import cv2
import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pycocotools import mask as mask_utils
from torchvision.ops import nms as box_nms

from ifcn.data.image import image_tensor, load_image, resize_image
from ifcn.data.instances import file_name_fault, read_image_table, read_instances
from ifcn.errors import IfcnError
from ifcn.model import load_model
from ifcn.proposals.format import Proposals, check_image_sets
from ifcn.proposals.inference import window_masks
from ifcn.reporting.plots import save_png
from ifcn.reporting.summaries import Picture, write_figures_index
from ifcn.training.distributed import resolve_device
from ifcn.windows import STRIDE, rank_windows, window_boxes

# Fig. 8: each object's best proposal among the top FIG8_TOP_N; below MISSED_IOU it is missed.
FIG8_TOP_N = 100
MISSED_IOU = 0.5


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


def _gt_rles(images_json: Path) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    """Images by id and each image's non-crowd object masks as compressed RLE, in file order,
    from the validated JSON."""
    instances = read_instances(images_json)
    objects: dict[int, list[dict]] = {image_id: [] for image_id in instances.images}
    for ann in instances.annotations:
        if not ann.get("iscrowd"):
            objects[ann["image_id"]].append(instances.rle(ann))
    return instances.image_table(), objects


def pick_images(objects: dict[int, list], count: int) -> list[int]:
    """The first ``count`` image ids in sorted order that show objects (then any others)."""
    ids = sorted(objects)
    with_objects = [i for i in ids if objects[i]]
    chosen = (with_objects + [i for i in ids if not objects[i]])[:count]
    if len(chosen) < count:
        raise IfcnError(f"{count} pictures asked for, but only {len(ids)} validation images")
    return chosen


def best_proposals(gt_rles: list[dict], proposal_rles: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """For each object, the index of its best-IoU proposal and that IoU (-1 and 0: none)."""
    if not gt_rles or not proposal_rles:
        return np.full(len(gt_rles), -1), np.zeros(len(gt_rles))
    ious = np.asarray(mask_utils.iou(proposal_rles, gt_rles, [0] * len(gt_rles)))
    ious = ious.reshape(len(proposal_rles), len(gt_rles))
    return ious.argmax(axis=0), ious.max(axis=0)


def draw_recall_picture(
    image: np.ndarray, gt_masks: np.ndarray, proposal_masks: np.ndarray, ious: np.ndarray
) -> np.ndarray:
    """Fig. 8: each object's best proposal tinted and labelled with its IoU; objects whose best
    IoU is below MISSED_IOU filled with white and outlined in red."""
    missed = ious < MISSED_IOU
    out = image.astype(np.float32)
    thickness = max(1, round(min(image.shape[:2]) / 150))
    contours = []
    for mask in gt_masks[missed]:
        region = mask.astype(bool)
        out[region] = out[region] * 0.25 + 255 * 0.75
        found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contours += found
    out = out.clip(0, 255).astype(np.uint8)
    cv2.drawContours(out, contours, -1, (230, 0, 0), thickness)
    return draw_proposals(out, proposal_masks[~missed], ious[~missed])


def _load_model(config: dict, checkpoint: Path, device_name: str):
    device = resolve_device(device_name)
    return load_model(config, checkpoint, device), device


def _nearest_scale(config: dict, image: np.ndarray) -> int:
    """The inference scale nearest the image's own shorter side."""
    short = min(image.shape[:2])
    return min(config["infer"]["scales"], key=lambda s: abs(s - short))


def draw_pictures(
    config: dict,
    figures_dir: Path,
    count: int,
    images_json: Path,
    image_root: Path,
    proposals: Path,
    checkpoint: Path | None = None,
    device_name: str = "auto",
) -> list[Picture]:
    """The report's pictures of the first ``count`` validation images, and their index.

    figures_dir/proposals-<i>.png: Fig. 8 (every object's best proposal, the missed ones
    outlined); with ``checkpoint`` and the InstanceFCN head, score_maps-<i>.png: Fig. 5.
    figures_dir/figures.json lists them with their captions. Proposals of another image set
    than ``images_json`` are refused.
    """
    table, objects = _gt_rles(images_json)
    chosen = pick_images(objects, count)
    with Proposals(proposals) as reader:
        check_image_sets(reader, table, images_json)
        model, device = None, None
        if chosen and checkpoint is not None and config["model"]["head"] == "instancefcn":
            model, device = _load_model(config, checkpoint, device_name)
        pictures: list[Picture] = []
        for position, image_id in enumerate(chosen, start=1):
            entry = table[image_id]
            image = load_image(image_root / entry["file_name"])
            rles = reader.rles(image_id, FIG8_TOP_N)
            best, ious = best_proposals(objects[image_id], rles)
            found = _decode(rles, image.shape[:2])[np.clip(best, 0, None)]
            gt_masks = _decode(objects[image_id], image.shape[:2])
            picture = draw_recall_picture(image, gt_masks, found, ious)
            missed = int((ious < MISSED_IOU).sum())
            pictures.append(
                Picture(
                    save_png(picture, figures_dir / f"proposals-{position}.png"),
                    f"Image {image_id} (`{entry['file_name']}`): the best of the top "
                    f"{FIG8_TOP_N} proposals for each of its {len(ious)} objects, labelled "
                    f"with its IoU; {missed} missed (best IoU < {MISSED_IOU}) in white with "
                    "a red outline, as in the paper's Fig. 8.",
                    "proposals",
                    image_id,
                )
            )
            if model is not None:
                scale = _nearest_scale(config, image)
                picture = score_map_picture(
                    model, image, scale, config["infer"]["max_size"], 4, device
                )
                pictures.append(
                    Picture(
                        save_png(picture, figures_dir / f"score_maps-{position}.png"),
                        f"Image {image_id} at shorter side {scale}: the k² = {model.k**2} "
                        "instance-sensitive score maps, the four best windows after box NMS "
                        "and the instances assembled from the maps, as in the paper's Fig. 5.",
                        "score_maps",
                        image_id,
                    )
                )
    write_figures_index(pictures, figures_dir / "figures.json")
    return pictures


def draw_image(
    config: dict,
    checkpoint: Path,
    images_json: Path,
    image_root: Path,
    image_id: int,
    out_dir: Path,
    proposals: Path | None,
    top_n: int,
    scale: int | None = None,
    windows: int = 4,
    device_name: str = "auto",
) -> list[Path]:
    """One image's top proposals (with ``proposals``) and its score maps with assembled
    instances: out_dir/image<id>_proposals.png, image<id>_score_maps.png."""
    table = read_image_table(images_json)
    if image_id not in table:
        raise IfcnError(f"no image with id {image_id}", images_json)
    entry = table[image_id]
    image = load_image(image_root / entry["file_name"])
    written = []
    if proposals is not None:
        with Proposals(proposals) as reader:
            if image_id not in reader:
                raise IfcnError(f"no proposals for image {image_id}", proposals)
            check_image_sets(reader, {image_id: entry}, images_json)
            masks = reader.masks(image_id, top_n)
            scores = reader.scores(image_id, top_n)
        picture = draw_proposals(image, masks, scores)
        written.append(save_png(picture, out_dir / f"image{image_id}_proposals.png"))
    model, device = _load_model(config, checkpoint, device_name)
    scale = _nearest_scale(config, image) if scale is None else scale
    picture = score_map_picture(model, image, scale, config["infer"]["max_size"], windows, device)
    written.append(save_png(picture, out_dir / f"image{image_id}_score_maps.png"))
    return written


def picture_names(file_names: Mapping[int, str]) -> dict[int, str]:
    """The picture of each image (id -> file name relative to its folder): the file name with
    ``.png`` appended, folders kept (``a/x.jpg`` -> ``a/x.jpg.png``), so that x.jpg and x.png
    give two pictures; names that still meet (X.jpg and x.jpg on a case-blind disk) take the
    image id (``x.jpg-7.png``). Each name must be relative and free of '..' (else IfcnError)."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for image_id, file_name in file_names.items():
        fault = file_name_fault(file_name)
        if fault:
            raise IfcnError(f"image {image_id}: {fault}")
        stem = PurePosixPath(file_name).as_posix()
        name, extra = f"{stem}.png", 0
        while name.casefold() in taken:
            extra += 1
            name = f"{stem}-{image_id}{'' if extra == 1 else f'-{extra}'}.png"
        taken.add(name.casefold())
        names[image_id] = name
    return names


def _inside(folder: Path, name: str) -> Path:
    """``folder``/``name``, refused unless it resolves inside ``folder`` (a symbolic link in
    the way could lead out)."""
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise IfcnError(f"{name!r} would lie outside {folder}", path)
    return path


def draw_folder(proposals: Path, image_root: Path, out_dir: Path, top_n: int) -> list[Path]:
    """Every image of ``proposals`` with its top ``top_n`` proposals, for images without
    annotations (`ifcn infer --image-dir`): out_dir/<file_name>.png (`picture_names`).

    Every file name is checked before anything is drawn (relative, no '..'), and every picture
    lands inside ``out_dir``: nothing a proposals file says is written outside it."""
    written = []
    with Proposals(proposals) as reader:
        ids = reader.image_ids.tolist()
        try:
            outputs = picture_names({image_id: reader.file_name(image_id) for image_id in ids})
        except IfcnError as exc:
            raise IfcnError(str(exc), proposals) from None
        for image_id in ids:
            name = reader.file_name(image_id)
            image = load_image(image_root / name)
            if image.shape[:2] != reader.size(image_id):
                h, w = reader.size(image_id)
                raise IfcnError(
                    f"image {image_id} is {h}x{w} in {proposals}, the file "
                    f"{image.shape[0]}x{image.shape[1]}: proposals of other images",
                    image_root / name,
                )
            picture = draw_proposals(
                image, reader.masks(image_id, top_n), reader.scores(image_id, top_n)
            )
            written.append(save_png(picture, _inside(out_dir, outputs[image_id])))
    return written


def _decode(rles: list[dict], size: tuple[int, int]) -> np.ndarray:
    if not rles:
        return np.zeros((0, *size), np.uint8)
    return np.moveaxis(mask_utils.decode(rles), 2, 0)
