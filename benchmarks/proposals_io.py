"""proposals.h5 vs. COCO results JSON: write time, read time, one-image access, size (DESIGN §12).

1,000 images x 1,000 random-mask proposals at 375x500 (ellipses and boxes, COCO compressed RLE)
by default, written and read both ways in one run:

    python benchmarks/proposals_io.py --out results/bench/proposals_io.json [--images 1000]

JSON is written with json.dump and read with json.load (what a COCO results file costs);
proposals.h5 with ProposalWriter and Proposals. One-image access: h5 opens the file and reads
one image's proposals; JSON has no index, so it must load the whole file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ifcn.proposals.format import Proposals, ProposalWriter

HEIGHT, WIDTH = 375, 500
ATTRS = {
    "config": {},
    "checkpoint_sha256": "0" * 64,
    "dataset": "bench",
    "scales": [600.0],
    "k": 5,
    "m": 21,
}


def random_shapes(rng: np.random.Generator, n: int, h: int, w: int) -> dict[str, np.ndarray]:
    """Centres, half-axes and kind (box or ellipse) of n random shapes in an h x w image."""
    return {
        "cx": rng.uniform(0, w, n),
        "cy": rng.uniform(0, h, n),
        "ax": w * np.exp(rng.uniform(np.log(0.01), np.log(0.45), n)),
        "ay": h * np.exp(rng.uniform(np.log(0.01), np.log(0.45), n)),
        "box": rng.random(n) < 0.5,
    }


def shape_rles(shapes: dict[str, np.ndarray], h: int, w: int) -> list[bytes]:
    """COCO compressed RLE counts of axis-aligned ellipses/boxes, without drawing any mask.

    Each column of a convex shape holds one run of ones, so the column-major RLE follows from
    the run's top and bottom row per column; pycocotools compresses the counts.
    """
    cx, cy, ax, ay = (shapes[k][:, None] for k in ("cx", "cy", "ax", "ay"))
    dx = (np.arange(w) + 0.5 - cx) / ax
    half = np.where(shapes["box"][:, None], ay, ay * np.sqrt(np.clip(1 - dx**2, 0, None)))
    half = np.where(np.abs(dx) <= 1, half, -1.0)
    top = np.clip(np.ceil(cy - half - 0.5), 0, h).astype(np.int64)
    bottom = np.clip(np.floor(cy + half - 0.5) + 1, 0, h).astype(np.int64)
    mask_id, col = np.nonzero(bottom > top)
    start, end = col * h + top[mask_id, col], col * h + bottom[mask_id, col]
    # merge runs that continue into the next column (a shape spanning the full height)
    joined = (mask_id[1:] == mask_id[:-1]) & (start[1:] == end[:-1])
    first, last = np.r_[True, ~joined], np.r_[~joined, True]
    mask_id, start, end = mask_id[first], start[first], end[last]
    per_mask = np.bincount(mask_id, minlength=len(cx))
    bounds = np.empty(2 * len(start), np.int64)
    bounds[0::2], bounds[1::2] = start, end
    rles, pos = [], 0
    for n in per_mask.tolist():
        b = bounds[pos : pos + 2 * n]
        pos += 2 * n
        counts = np.diff(b, prepend=0, append=h * w)
        if n and counts[-1] == 0:  # a mask ending on the last pixel has no trailing zeros
            counts = counts[:-1]
        rles.append({"size": [h, w], "counts": counts})
    return [r["counts"] for r in mask_utils.frPyObjects(rles, h, w)]


def make_images(num_images: int, per_image: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        rles = shape_rles(random_shapes(rng, per_image, HEIGHT, WIDTH), HEIGHT, WIDTH)
        boxes = mask_utils.toBbox([{"size": [HEIGHT, WIDTH], "counts": c} for c in rles])
        boxes[:, 2:] += boxes[:, :2]
        images.append(
            {
                "image_id": i + 1,
                "file_name": f"{i + 1:012d}.jpg",
                "height": HEIGHT,
                "width": WIDTH,
                "scores": np.sort(rng.random(per_image).astype(np.float32))[::-1],
                "boxes": boxes.astype(np.float32),
                "rles": rles,
                "scales": np.zeros(per_image, np.int8),
            }
        )
    return images


def results_json(images: list[dict]) -> list[dict]:
    return [
        {
            "image_id": im["image_id"],
            "category_id": 1,
            "segmentation": {"size": [im["height"], im["width"]], "counts": c.decode()},
            "score": float(s),
        }
        for im in images
        for c, s in zip(im["rles"], im["scores"].tolist(), strict=True)
    ]


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-image", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("results/bench/proposals_io.json"))
    args = parser.parse_args()

    t = time.perf_counter()
    images = make_images(args.images, args.per_image)
    results = results_json(images)
    print(f"generated {len(results):,} proposals in {time.perf_counter() - t:.1f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as d:
        h5_path, json_path = Path(d) / "proposals.h5", Path(d) / "results.json"

        def write_h5() -> None:
            with ProposalWriter(h5_path, ATTRS) as writer:
                for im in images:
                    writer.add(**im)

        def write_json() -> None:
            with open(json_path, "w") as f:
                json.dump(results, f)

        def read_h5() -> None:
            with Proposals(h5_path) as p:
                for record in p:
                    record.coco_rles()

        def read_json() -> None:
            with open(json_path) as f:
                json.load(f)

        ids = random.Random(1).sample(range(1, args.images + 1), min(20, args.images))

        def one_image_h5() -> None:
            for image_id in ids:
                with Proposals(h5_path) as p:
                    p.get(image_id).coco_rles()

        figures = {
            "write_h5_s": timed(write_h5),
            "write_json_s": timed(write_json),
            "read_h5_s": timed(read_h5),
            "read_json_s": timed(read_json),
            "one_image_h5_s": timed(one_image_h5) / len(ids),
            "size_h5_bytes": os.path.getsize(h5_path),
            "size_json_bytes": os.path.getsize(json_path),
        }
    figures["one_image_json_s"] = figures["read_json_s"]  # JSON has to be loaded whole
    ratios = {
        "write_time_h5_over_json": figures["write_h5_s"] / figures["write_json_s"],
        "read_time_h5_over_json": figures["read_h5_s"] / figures["read_json_s"],
        "one_image_speedup_h5_vs_json": figures["one_image_json_s"] / figures["one_image_h5_s"],
        "size_h5_over_json": figures["size_h5_bytes"] / figures["size_json_bytes"],
    }
    report = {
        "images": args.images,
        "proposals_per_image": args.per_image,
        "image_size": [HEIGHT, WIDTH],
        "mean_rle_bytes": float(np.mean([len(c) for im in images for c in im["rles"]])),
        **figures,
        **ratios,
        "targets": {
            "write_time_h5_over_json": "<= 0.5",
            "size_h5_over_json": "<= 0.5",
            "one_image_speedup_h5_vs_json": ">= 100",
        },
    }
    for key, value in {**figures, **ratios}.items():
        print(f"{key:32s} {value:,.4g}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
