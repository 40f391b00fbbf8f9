"""The seeded synthetic dataset of DESIGN §3, written as COCO instances JSON.

Shapes of a few categories on textured backgrounds; about half the objects are placed as a
touching or overlapping neighbour of an earlier object with the *same colour and category*, the
case a semantic FCN cannot split into instances and InstanceFCN can. Objects are painted in order
(later on top); an object left mostly hidden is removed before painting, so every visible shape is
annotated and every annotation is what is visible. Each image is a pure function of
(seed, split, index), so the output is byte-identical for any number of workers.

The command `ifcn data synth` is `ifcn.commands.data_synth`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from ifcn import atomic
from ifcn.errors import IfcnError
from ifcn.pool import Pool
from ifcn.signals import held, worker_process

CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "ellipse", "supercategory": "shape"},
    {"id": 2, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
    {"id": 5, "name": "cross", "supercategory": "shape"},
)
SPLITS: tuple[str, ...] = ("train", "val")

# Saturated base colours; each image uses a few, so unrelated objects also share colours.
PALETTE = np.array(
    [
        [220, 40, 40],
        [40, 170, 60],
        [50, 90, 220],
        [235, 200, 40],
        [200, 60, 200],
        [40, 190, 200],
        [240, 130, 30],
        [150, 90, 50],
    ],
    dtype=np.float32,
)
MIN_SIZE, MAX_SIZE = 40.0, 170.0  # larger side of an object's box, in pixels
NEIGHBOUR_PROB = 0.5  # share of objects placed against an earlier same-colour, same-category one
MIN_VISIBLE_FRACTION, MIN_VISIBLE_AREA = 0.3, 150
MIN_INSIDE_FRACTION = 0.7  # share of a shape that must fall inside the image


@dataclass(frozen=True)
class SynthParams:
    """Per-image generation parameters (everything but the seed, split and index)."""

    min_side: int
    max_side: int
    min_objects: int
    max_objects: int


@dataclass
class _Shape:
    category_id: int
    colour: np.ndarray
    outline: np.ndarray  # (K, 2) polygon about the origin, x/y in pixels
    size: float
    centre: tuple[float, float] = (0.0, 0.0)
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class SynthObject:
    """One annotated instance of a rendered image: its visible mask and what it looks like."""

    category_id: int
    colour: tuple[int, int, int]
    mask: np.ndarray  # (H, W) uint8 0/1, the visible pixels


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image; independent of how images are spread over workers."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _outline(category_id: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon of a shape, rotated at random, box centred on the origin, larger box side `size`."""
    if category_id == 1:  # ellipse
        t = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), rng.uniform(0.45, 1.0) * np.sin(t)], 1)
    elif category_id == 2:  # rectangle
        a = rng.uniform(0.35, 1.0)
        pts = np.array([[-1, -a], [1, -a], [1, a], [-1, a]], dtype=np.float64)
    elif category_id == 3:  # triangle
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.8, 1.0, 3)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif category_id == 4:  # five-point star
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.55))
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    else:  # cross
        w = rng.uniform(0.18, 0.32)
        pts = np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ],
            dtype=np.float64,
        )
    theta = rng.uniform(0.0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = pts @ rot.T
    lo, hi = pts.min(0), pts.max(0)
    return (pts - (lo + hi) / 2) * (size / (hi - lo).max())


def _raster(outline: np.ndarray, centre: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    pts = np.round((outline + np.asarray(centre)) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def _dilate(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask, np.ones((3, 3), np.uint8))


def _inside_enough(shape: _Shape, mask: np.ndarray) -> bool:
    return mask.sum() >= MIN_INSIDE_FRACTION * cv2.contourArea(shape.outline.astype(np.float32))


def _new_shape(
    rng: np.random.Generator, palette: np.ndarray, max_size: float, like: _Shape | None
) -> _Shape:
    if like is None:
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        colour = palette[rng.integers(len(palette))]
        size = float(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(max_size))))
    else:
        category_id, colour = like.category_id, like.colour
        size = float(np.clip(like.size * rng.uniform(0.75, 1.3), MIN_SIZE, max_size))
    return _Shape(category_id, colour, _outline(category_id, size, rng), size)


def _place_free(shape: _Shape, rng: np.random.Generator, hw: tuple[int, int]) -> bool:
    h, w = hw
    margin = 0.3 * shape.size
    shape.centre = (rng.uniform(margin, w - margin), rng.uniform(margin, h - margin))
    shape.mask = _raster(shape.outline, shape.centre, hw)
    return _inside_enough(shape, shape.mask)


def _place_against(
    shape: _Shape, other: _Shape, rng: np.random.Generator, hw: tuple[int, int]
) -> bool:
    """Put `shape` against `other`: bisect the centre distance to contact, often overlap more."""
    theta = rng.uniform(0.0, 2 * np.pi)
    direction = np.array([np.cos(theta), np.sin(theta)])
    target = _dilate(other.mask)

    def centre_at(d: float) -> tuple[float, float]:
        return tuple(np.asarray(other.centre) + d * direction)

    def touches(d: float) -> bool:
        return bool(np.any(target & _raster(shape.outline, centre_at(d), hw)))

    lo, hi = 0.0, shape.size + other.size  # touching at lo; apart at hi (> half-diagonals)
    if not touches(lo) or touches(hi):
        return False
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if touches(mid) else (lo, mid)
    if rng.random() < 0.6:
        lo = max(0.0, lo - rng.uniform(0.0, 0.3) * min(shape.size, other.size))
    shape.centre = centre_at(lo)
    shape.mask = _raster(shape.outline, shape.centre, hw)
    return bool(np.any(target & shape.mask)) and _inside_enough(shape, shape.mask)


def _layout(rng: np.random.Generator, hw: tuple[int, int], params: SynthParams) -> list[_Shape]:
    """Shapes in painting order, each with its full (unoccluded) mask."""
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    palette = PALETTE[rng.choice(len(PALETTE), int(rng.integers(2, 5)), replace=False)]
    palette = np.clip(palette + rng.uniform(-20, 20, palette.shape), 0, 255)
    max_size = max(MIN_SIZE, min(MAX_SIZE, 0.55 * min(hw)))
    shapes: list[_Shape] = []
    for _ in range(6 * n):
        if len(shapes) >= n:
            break
        if shapes and rng.random() < NEIGHBOUR_PROB:
            pos = int(rng.integers(len(shapes)))
            other = shapes[pos]
            shape = _new_shape(rng, palette, max_size, other)
            if _place_against(shape, other, rng, hw):
                shapes.insert(pos + int(rng.integers(2)), shape)
        else:
            shape = _new_shape(rng, palette, max_size, None)
            if _place_free(shape, rng, hw):
                shapes.append(shape)
    return shapes


def _visible(shapes: list[_Shape], hw: tuple[int, int]) -> list[np.ndarray]:
    owner = np.full(hw, -1, np.int16)
    for i, shape in enumerate(shapes):
        owner[shape.mask.astype(bool)] = i
    return [(owner == i).astype(np.uint8) for i in range(len(shapes))]


def _drop_hidden(shapes: list[_Shape], hw: tuple[int, int]) -> tuple[list[_Shape], list]:
    """Remove the most hidden shape until every remaining one is visible enough."""
    while True:
        visible = _visible(shapes, hw)
        deficit = [
            v.sum() / max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * s.mask.sum())
            for s, v in zip(shapes, visible, strict=True)
        ]
        if not deficit or min(deficit) >= 1.0:
            return shapes, visible
        shapes = [s for i, s in enumerate(shapes) if i != int(np.argmin(deficit))]


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    theta = rng.uniform(0.0, 2 * np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    kind = rng.integers(4)
    if kind == 0:  # gradient
        t = (u - u.min()) / max(float(np.ptp(u)), 1.0)
    elif kind == 1:  # smooth blobs
        grid = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        t = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(8, 40) + rng.uniform(0, 2 * np.pi))
    else:  # checker
        cell = rng.uniform(10, 48)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    grey = rng.uniform(60, 200, (2, 1))
    colours = (0.5 * rng.uniform(30, 230, (2, 3)) + 0.5 * grey).astype(np.float32)
    tilt = np.float32(rng.uniform(-0.15, 0.15) / max(float(np.ptp(u)), 1.0))
    light = (1.0 + tilt * (u - u.mean()))[..., None]
    t = np.clip(t, 0.0, 1.0)[..., None]
    return (colours[0] + (colours[1] - colours[0]) * t) * light


def _paint(image: np.ndarray, shape: _Shape, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Paint one object: its colour under a mild linear shading and a fine texture."""
    ys, xs = np.nonzero(mask)
    theta = rng.uniform(0.0, 2 * np.pi)
    cx, cy = shape.centre
    s = ((xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)) / shape.size
    shade = 1.0 + rng.uniform(0.1, 0.35) * s + rng.normal(0.0, 0.03, s.shape)
    image[ys, xs] = shape.colour * shade[:, None].astype(np.float32)


def render_image(
    seed: int, split: str, index: int, params: SynthParams
) -> tuple[np.ndarray, list[SynthObject]]:
    """The image (H, W, 3) RGB uint8 and its annotated objects, from (seed, split, index) alone."""
    rng = image_rng(seed, split, index)
    hw = (
        int(rng.integers(params.min_side, params.max_side + 1)),
        int(rng.integers(params.min_side, params.max_side + 1)),
    )
    shapes, visible = _drop_hidden(_layout(rng, hw, params), hw)
    image = _background(rng, hw)
    for shape in shapes:
        _paint(image, shape, shape.mask, rng)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    image += 4.0 * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    objects = [
        SynthObject(s.category_id, tuple(int(c) for c in np.round(s.colour)), v)
        for s, v in zip(shapes, visible, strict=True)
    ]
    return image, objects


def _annotation(obj: SynthObject) -> dict:
    rle = mask_utils.encode(np.asfortranarray(obj.mask))
    ys, xs = np.nonzero(obj.mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "category_id": obj.category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "area": int(obj.mask.sum()),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "iscrowd": 0,
    }


def _make_image(job: tuple[int, str, int, SynthParams, str]) -> tuple[dict, list[dict]]:
    """Render one image, write its PNG; return its COCO image entry and annotations (no ids)."""
    seed, split, index, params, image_dir = job
    image, objects = render_image(seed, split, index, params)
    file_name = f"{split}_{index + 1:06d}.png"
    ok, png = cv2.imencode(".png", image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise IfcnError("could not encode the image as PNG", Path(image_dir) / file_name)
    atomic.write_bytes(Path(image_dir) / file_name, png.tobytes())
    entry = {
        "id": index + 1,
        "file_name": file_name,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
    }
    return entry, [_annotation(obj) for obj in objects]


def _init_worker() -> None:
    worker_process()
    cv2.setNumThreads(1)


def _check(params: SynthParams, out_dir: Path) -> None:
    """What the schema cannot say: each range's ends in order (the schema bounds each key)."""
    if params.min_side > params.max_side:
        raise IfcnError("need min_side <= max_side", out_dir)
    if params.min_objects > params.max_objects:
        raise IfcnError("need min_objects <= max_objects", out_dir)


def generate_dataset(out_dir: str | Path, settings: Mapping, workers: int = 1) -> dict[str, Path]:
    """Write out_dir/{train,val}.json and out_dir/images/*.png under ``settings`` (the config's
    ``data.synth`` section) with ``workers`` processes; return their paths.

    The JSON files are written last (each atomically), so a dataset with both JSON files present
    is complete.
    """
    out_dir = Path(out_dir)
    seed, num_train, num_val = settings["seed"], settings["num_train"], settings["num_val"]
    params = SynthParams(
        settings["min_side"], settings["max_side"], settings["min_objects"], settings["max_objects"]
    )
    _check(params, out_dir)
    image_dir = out_dir / "images"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IfcnError(f"cannot create the output folder: {exc.strerror}", image_dir) from exc
    counts = {"train": num_train, "val": num_val}
    jobs = [(seed, s, i, params, str(image_dir)) for s in SPLITS for i in range(counts[s])]
    if workers > 1:
        # spawn, not fork: a forked child deadlocks on OpenCV's thread pool if the parent used it
        context = multiprocessing.get_context("spawn")
        with contextlib.ExitStack() as stack:
            with held():  # until its workers can handle a signal (see ifcn.signals)
                pool = stack.enter_context(Pool(workers, _init_worker, context=context))
            results = pool.map(_make_image, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        results = [_make_image(job) for job in jobs]

    paths = {"images": image_dir}
    start = 0
    for split in SPLITS:
        chunk = results[start : start + counts[split]]
        start += counts[split]
        annotations = []
        for entry, anns in chunk:
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": entry["id"], **ann})
        dataset = {
            "info": {
                "description": "ifcn synthetic shapes (DESIGN §3)",
                "split": split,
                "seed": seed,
                "params": vars(params),
            },
            "images": [entry for entry, _ in chunk],
            "annotations": annotations,
            "categories": [dict(c) for c in CATEGORIES],
        }
        paths[split] = out_dir / f"{split}.json"
        atomic.write_bytes(paths[split], json.dumps(dataset, separators=(",", ":")).encode())
    return paths
