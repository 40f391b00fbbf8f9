"""`ifcn evaluate` vs. pycocotools COCOeval as whole processes, ratios measured in one run
(DESIGN §8, §12; issue 15: >= 20x from proposals.h5, >= 10x from a COCO results JSON).

500 images at 375x500 with ~7 GT objects each (a few crowd), 1,000 proposals each: jittered
copies of the GT masks plus random blobs. Each round runs three processes back to back:
COCOeval as the paper's protocol needs it (iouType='segm', useCats=0, maxDets 10/100/1000) from
the GT JSON and a COCO results JSON, then `ifcn evaluate` from proposals.h5 and from the results
JSON. Every process starts Python, imports what it needs, reads its inputs and, for ifcn,
writes ar.json, the CSV and the PNG: the time a user waits. The speed-ups are the medians of
the per-round ratios; AR must equal COCOeval's to 1e-12 (recall per threshold, area and N).

    python benchmarks/evaluate.py --out results/bench/evaluate.json [--images 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from proposals_io import ATTRS, HEIGHT, WIDTH, random_shapes, shape_rles  # sibling benchmark
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

MAX_DETS = [10, 100, 1000]
AREAS = ["all", "small", "medium", "large"]
TARGETS = {"speedup_h5": 20.0, "speedup_json": 10.0}


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
    from ifcn.proposals.format import ProposalWriter  # not in the COCOeval process

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


def run_cocoeval(gt_path: Path, results_path: Path, out: Path) -> None:
    """COCOeval's recall (T, A, M) for proposals (segm, useCats=0, maxDets 10/100/1000) to out."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        coco_eval = COCOeval(gt, gt.loadRes(str(results_path)), iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = MAX_DETS
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    np.save(out, coco_eval.eval["recall"][:, 0])


def timed(command: list[str]) -> float:
    """Wall seconds of a command run to completion; its failure stops the benchmark."""
    t = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def ifcn_recall(ar_json: Path) -> np.ndarray:
    """(T, A, M) recall from an ar.json, in COCOeval's layout (None for 'no GT' -> -1)."""
    by_area = json.loads(ar_json.read_text())["recall_by_area"]
    return np.array(
        [[[-1.0 if v is None else v for v in by_area[a][str(n)]] for a in AREAS] for n in MAX_DETS]
    ).transpose(2, 1, 0)


def ar(recall: np.ndarray) -> list[float]:
    """AR@N of the 'all' area range, as COCOeval's summarize computes it."""
    return [float(np.mean(r[r > -1])) for r in recall[:, 0, :].T]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--per-image", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=Path("results/bench/evaluate.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    rounds = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.out.parent) as d:
        d = Path(d)
        t = time.perf_counter()
        paths = make_dataset(d, args.images, args.per_image)
        print(f"generated {args.images} images in {time.perf_counter() - t:.1f} s")
        # ifcn as a user has it installed, its modules compiled: with PYTHONDONTWRITEBYTECODE
        # set (some shells and CI images set it) each process would compile them again
        compileall.compile_dir(Path(__file__).resolve().parents[1] / "ifcn", quiet=1)
        reference = d / "cocoeval.npy"
        cocoeval = [sys.executable, __file__, "--cocoeval", str(paths["gt"]), str(paths["json"])]
        outputs = {}

        def ifcn(source: str) -> list[str]:
            outputs[source] = d / source / "ar.json"
            return [
                sys.executable, "-m", "ifcn", "evaluate", "--gt", str(paths["gt"]),
                "--proposals", str(paths[source]), "--out", str(outputs[source]),
                "--workers", str(args.workers),
            ]  # fmt: skip

        for k in range(args.rounds):
            times = {
                "cocoeval_s": timed([*cocoeval, str(reference)]),
                "ifcn_h5_s": timed(ifcn("h5")),
                "ifcn_json_s": timed(ifcn("json")),
                "loadavg_1min": os.getloadavg()[0],
            }
            times["speedup_h5"] = times["cocoeval_s"] / times["ifcn_h5_s"]
            times["speedup_json"] = times["cocoeval_s"] / times["ifcn_json_s"]
            rounds.append(times)
            print(
                f"round {k + 1}: COCOeval {times['cocoeval_s']:.2f} s, ifcn .h5 "
                f"{times['ifcn_h5_s']:.2f} s ({times['speedup_h5']:.1f}x), ifcn JSON "
                f"{times['ifcn_json_s']:.2f} s ({times['speedup_json']:.1f}x), "
                f"load {times['loadavg_1min']:.1f}"
            )
        theirs = np.load(reference)
        ours = {source: ifcn_recall(path) for source, path in outputs.items()}

    diff = float(max(np.abs(r - theirs).max() for r in ours.values()))
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    report = {
        "images": args.images,
        "proposals_per_image": args.per_image,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "rounds": rounds,
        "median": median,
        "targets": {key: f">= {value:g}" for key, value in TARGETS.items()},
        "max_abs_recall_diff": diff,
        "identical_to_1e-12": diff <= 1e-12,
        "AR_cocoeval": dict(zip(map(str, MAX_DETS), ar(theirs), strict=True)),
        "AR_ifcn_h5": dict(zip(map(str, MAX_DETS), ar(ours["h5"]), strict=True)),
        "AR_ifcn_json": dict(zip(map(str, MAX_DETS), ar(ours["json"]), strict=True)),
    }
    print(f"median of {args.rounds} rounds (load average before: {load_before[0]:.1f}):")
    print(f"  COCOeval                      {median['cocoeval_s']:8.2f} s")
    for key, label in (("h5", "proposals.h5"), ("json", "results JSON")):
        speedup = median[f"speedup_{key}"]
        target = TARGETS[f"speedup_{key}"]
        verdict = "met" if speedup >= target else "NOT met"
        print(
            f"  ifcn evaluate ({label + ')':<13} {median[f'ifcn_{key}_s']:8.2f} s   "
            f"{speedup:5.1f}x faster (target >= {target:g}x: {verdict})"
        )
    print(f"  AR@10/100/1000 COCOeval {report['AR_cocoeval']}")
    print(f"  AR@10/100/1000 ifcn     {report['AR_ifcn_h5']}")
    verdict = "met" if diff <= 1e-12 else "NOT met"
    print(f"  max |recall difference| {diff:.3g} (target <= 1e-12: {verdict})")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cocoeval"]:
        run_cocoeval(*map(Path, sys.argv[2:5]))
    else:
        main()
