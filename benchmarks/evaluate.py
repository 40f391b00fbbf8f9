"""`ifcn evaluate` vs. pycocotools COCOeval on the same proposals, in one run (DESIGN §8, §12).

500 images at 375x500 with ~7 GT objects each (a few crowd), 1,000 proposals each: jittered
copies of the GT masks plus random blobs. COCOeval runs as the paper's protocol needs it
(iouType='segm', useCats=0, maxDets 10/100/1000) from the GT JSON and a COCO results JSON;
`ifcn evaluate` runs from the GT JSON and proposals.h5 (and, for reference, the results JSON).
Both timings cover loading the inputs; ifcn's exclude writing ar.json and the plot.

    python benchmarks/evaluate.py --out results/bench/evaluate.json [--images 500]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from proposals_io import ATTRS, HEIGHT, WIDTH, random_shapes, shape_rles  # sibling benchmark
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ifcn.evaluation.ar import evaluate
from ifcn.proposals.format import ProposalWriter

MAX_DETS = [10, 100, 1000]


def jittered(shapes: dict[str, np.ndarray], rng: np.random.Generator, n: int) -> dict:
    """n copies of randomly chosen shapes, shifted and rescaled by up to ~20%."""
    pick = rng.integers(0, len(shapes["cx"]), n)
    ax, ay = shapes["ax"][pick], shapes["ay"][pick]
    return {
        "cx": shapes["cx"][pick] + rng.normal(0, 0.15, n) * ax,
        "cy": shapes["cy"][pick] + rng.normal(0, 0.15, n) * ay,
        "ax": ax * np.exp(rng.normal(0, 0.15, n)),
        "ay": ay * np.exp(rng.normal(0, 0.15, n)),
        "box": shapes["box"][pick],
    }


def make_dataset(directory: Path, num_images: int, per_image: int, seed: int = 0) -> dict:
    """Write gt.json, proposals.h5 and results.json; return their paths."""
    rng = np.random.default_rng(seed)
    size = [HEIGHT, WIDTH]
    images, annotations, results = [], [], []
    paths = {
        "gt": directory / "gt.json",
        "h5": directory / "proposals.h5",
        "json": directory / "results.json",
    }
    with ProposalWriter(paths["h5"], ATTRS) as writer:
        for i in range(num_images):
            image_id = i + 1
            images.append(
                {"id": image_id, "height": HEIGHT, "width": WIDTH, "file_name": f"{image_id}.jpg"}
            )
            gt = random_shapes(rng, max(1, rng.poisson(7)), HEIGHT, WIDTH)
            gt_rles = shape_rles(gt, HEIGHT, WIDTH)
            areas = mask_utils.area([{"size": size, "counts": c} for c in gt_rles])
            for counts, area in zip(gt_rles, areas.tolist(), strict=True):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "segmentation": {"size": size, "counts": counts.decode()},
                        "area": float(area),
                        "iscrowd": int(rng.random() < 0.03),
                    }
                )
            n_jitter = per_image * 2 // 5
            shapes = {
                k: np.concatenate([a, b])
                for (k, a), b in zip(
                    jittered(gt, rng, n_jitter).items(),
                    random_shapes(rng, per_image - n_jitter, HEIGHT, WIDTH).values(),
                    strict=True,
                )
            }
            rles = shape_rles(shapes, HEIGHT, WIDTH)
            order = rng.permutation(per_image)
            rles = [rles[j] for j in order]
            scores = np.sort(rng.random(per_image).astype(np.float32))[::-1]
            boxes = mask_utils.toBbox([{"size": size, "counts": c} for c in rles])
            boxes[:, 2:] += boxes[:, :2]
            writer.add(
                image_id, f"{image_id}.jpg", HEIGHT, WIDTH, scores, boxes, rles,
                np.zeros(per_image, np.int8),
            )  # fmt: skip
            results += [
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": size, "counts": c.decode()},
                    "score": s,
                }
                for c, s in zip(rles, scores.tolist(), strict=True)
            ]
    gt_json = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
    paths["gt"].write_text(json.dumps(gt_json))
    paths["json"].write_text(json.dumps(results))
    return paths


def run_cocoeval(gt_path: Path, results_path: Path) -> np.ndarray:
    """COCOeval's recall array (T, A, M) for proposals: segm, useCats=0, maxDets 10/100/1000."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        coco_eval = COCOeval(gt, gt.loadRes(str(results_path)), iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = MAX_DETS
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval.eval["recall"][:, 0]


def ar(recall: np.ndarray) -> list[float]:
    """AR@N of the 'all' area range, as COCOeval's summarize computes it."""
    return [float(np.mean(r[r > -1])) for r in recall[:, 0, :].T]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--per-image", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=Path("results/bench/evaluate.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=args.out.parent) as d:
        t = time.perf_counter()
        paths = make_dataset(Path(d), args.images, args.per_image)
        print(f"generated {args.images} images in {time.perf_counter() - t:.1f} s")

        def ifcn(source: str) -> tuple[np.ndarray, float]:
            t = time.perf_counter()
            result = evaluate(paths["gt"], paths[source], max_dets=MAX_DETS, workers=args.workers)
            return result.recall, time.perf_counter() - t

        ours, t_h5 = ifcn("h5")
        ours_json, t_json = ifcn("json")
        t = time.perf_counter()
        reference = run_cocoeval(paths["gt"], paths["json"])
        t_coco = time.perf_counter() - t

    diff = float(max(np.abs(ours - reference).max(), np.abs(ours_json - reference).max()))
    report = {
        "images": args.images,
        "proposals_per_image": args.per_image,
        "workers": args.workers,
        "cocoeval_s": t_coco,
        "ifcn_h5_s": t_h5,
        "ifcn_json_s": t_json,
        "speedup_h5": t_coco / t_h5,
        "speedup_json": t_coco / t_json,
        "max_abs_recall_diff": diff,
        "identical_to_1e-9": diff <= 1e-9,
        "AR_cocoeval": dict(zip(map(str, MAX_DETS), ar(reference), strict=True)),
        "AR_ifcn": dict(zip(map(str, MAX_DETS), ar(ours), strict=True)),
        "target": "speedup >= 10 with identical AR",
    }
    print(f"COCOeval                      {t_coco:8.2f} s")
    print(f"ifcn evaluate (proposals.h5)  {t_h5:8.2f} s   {t_coco / t_h5:5.1f}x faster")
    print(f"ifcn evaluate (results JSON)  {t_json:8.2f} s   {t_coco / t_json:5.1f}x faster")
    print(f"AR@10/100/1000 COCOeval {report['AR_cocoeval']}")
    print(f"AR@10/100/1000 ifcn     {report['AR_ifcn']}")
    print(f"max |recall difference| {diff:.3g} ({'identical' if diff <= 1e-9 else 'DIFFERENT'})")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
