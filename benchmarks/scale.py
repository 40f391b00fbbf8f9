"""COCO-sized data (issue 24): every step of the COCO path as a whole process, on generated
files the size of COCO's, each figure printed beside its target, ratios measured in one run.

Generated (vectorised NumPy, written by orjson; `--scale 0.1` makes a tenth for a quick run):

- a COCO-train-sized instances JSON: 118,287 images of 640x480 and 858,257 objects, 1% of them
  crowd regions as uncompressed RLE (ellipses cut into stripes, as COCO's crowds of people are
  made of many runs), the others star-shaped polygons of 12-36 vertices (24 on average) with
  two decimals, area and bbox as COCO publishes them (the polygon's, not the mask's): ~480 MiB;
- its image folder: one 640x480 JPEG hard-linked under every file name;
- a val set of `--eval-images` 640x480 images (5,000: the paper's first 5k of val2014) with
  ~7 GT objects each and `--proposals` (1,000) proposals per image in proposals.h5: 40% jittered
  GT masks, the rest random ellipses and boxes. To keep the generation short the images cycle
  through 50 templates; every image is still evaluated on its own;
- `--shards` (64) candidates.h5 shards of `--merge-images` (1,000) images at the paper's
  settings (six scales, k = 5, m = 21, 1,000 windows per scale; the candidates of
  benchmarks/postprocess.py, ten records reused); merging them is linear in the images (it
  copies one image's candidates after another), so the figure for 5,000 is scaled from it.

Measured, each as a whole process (wall seconds; peak memory: the largest process's maximum
resident set from wait4, and for jobs of several processes the peak over time of the sum of
their proportional set sizes, PSS, which counts a page shared by n processes 1/n in each):

| step | target |
|---|---|
| pycocotools `COCO(json)` of the train JSON | the reference of the ratios |
| `ifcn data check` (every mask rasterised, every image file read, the check recorded) | <= 3x |
| `ifcn data convert --format coco` (the same, plus the converted JSON and its record) | <= 3x |
| `ifcn train --iters 1` on the converted JSON: start to the end of its first step | <= 2x |
| its peak memory per rank | <= COCO()'s |
| the same under `torchrun --nproc-per-node 2`: the PSS of all processes | <= 1.5x one rank's |
| the same 2 ranks started as srun starts them, without torchrun's launcher process | reported |
| the same 2 ranks forked by `ifcn train --nproc-per-node 2` (ifcn.training.launch) | <= 1.5x |
| `ifcn evaluate` on `--eval-images` x `--proposals` (2 worker processes) | <= 60 s, <= 4 GB |

and, reported without a target: `ifcn train` on a JSON never checked (it validates the JSON
fully once, then the run folder's record serves its resumes: the second start is measured
too); COCOeval on `--cocoeval-images` of the val images with a results JSON (its time and
memory grow with the results it holds: the figure for all images is scaled linearly, and said
so); `snakemake -n --configfile config/coco.yaml` with `infer.shards: 64` (planning time);
`ifcn merge` of the candidates shards; proposals.h5's size, scaled from the val file to
train2017's 118,287 images (bytes per image x images).

    python benchmarks/scale.py --out results/bench/scale.json [--scale 0.1] [--workers 2]

"First step": `ifcn train --iters 1` runs one step, writes its checkpoint and exits; the whole
process's wall time is reported, so the figure includes the checkpoint and the exit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import psutil
import yaml
from evaluate import jittered  # sibling benchmarks
from PIL import Image
from postprocess import ATTRS as CANDIDATE_ATTRS
from postprocess import network_outputs, new_rank
from proposals_io import ATTRS as PROPOSAL_ATTRS
from proposals_io import random_shapes, shape_rles
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 480, 640
TRAIN_IMAGES, TRAIN_OBJECTS = 118_287, 858_257
CATEGORIES = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
TEMPLATES = 50
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/scale.json"))
    parser.add_argument("--scale", type=float, default=1.0, help="of COCO train's size")
    parser.add_argument("--workers", type=int, default=2, help="--workers of check/convert")
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--proposals", type=int, default=1000, help="per image")
    parser.add_argument("--cocoeval-images", type=int, default=500)
    parser.add_argument("--merge-images", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: temporary)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=[
            "check",
            "train",
            "torchrun",
            "unchecked",
            "evaluate",
            "cocoeval",
            "plan",
            "merge",
        ],  # fmt: skip
    )
    return parser


# --- generated files ----------------------------------------------------------------------


def crowd_counts(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Uncompressed RLE counts of n crowd regions: ellipses whose columns are cut into stripes
    of 3 px or more (a crowd of people is many runs)."""
    out = []
    cx, cy = rng.uniform(0, WIDTH, n), rng.uniform(0, HEIGHT, n)
    ax, ay = rng.uniform(40, 250, n), rng.uniform(40, 200, n)
    stripes = rng.integers(1, 21, n)
    cols = np.arange(WIDTH) + 0.5
    for i in range(n):
        dx = (cols - cx[i]) / ax[i]
        half = ay[i] * np.sqrt(np.clip(1 - dx**2, 0, None))
        top = np.clip(np.ceil(cy[i] - half - 0.5), 1, HEIGHT - 1).astype(np.int64)
        bottom = np.clip(np.floor(cy[i] + half - 0.5) + 1, 1, HEIGHT - 1).astype(np.int64)
        c = np.flatnonzero((np.abs(dx) < 1) & (bottom > top))
        j = np.arange(int(stripes[i]))
        length = (bottom[c] - top[c])[:, None]
        s = np.clip(length // 3, 1, int(stripes[i]))
        start = top[c][:, None] + (j * length) // s
        end = top[c][:, None] + ((j + 1) * length) // s - (j < s - 1)
        keep = j < s
        base = (c * HEIGHT)[:, None]
        bounds = np.empty(2 * int(keep.sum()), np.int64)
        bounds[0::2], bounds[1::2] = (start + base)[keep], (end + base)[keep]
        out.append(np.diff(bounds, prepend=0, append=HEIGHT * WIDTH))
    return out


def coco_train_json(path: Path, scale: float, seed: int = 0) -> dict:
    """Write the COCO-train-sized instances JSON; its counts and size."""
    rng = np.random.default_rng(seed)
    n_images = max(1, round(TRAIN_IMAGES * scale))
    n_objects = max(1, round(TRAIN_OBJECTS * scale))
    image_of = np.sort(rng.integers(0, n_images, n_objects))
    crowd = rng.random(n_objects) < 0.01
    categories = np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), n_objects)]
    n_polygons = int((~crowd).sum())
    vertices = rng.integers(12, 37, n_polygons)
    radius = np.exp(rng.uniform(np.log(4), np.log(200), n_polygons))
    cx, cy = rng.uniform(0, WIDTH, n_polygons), rng.uniform(0, HEIGHT, n_polygons)
    owner = np.repeat(np.arange(n_polygons), vertices)
    first = np.cumsum(vertices) - vertices
    k = np.arange(len(owner)) - first[owner]
    theta = 2 * np.pi * (k + 0.8 * rng.random(len(owner))) / vertices[owner]
    rho = radius[owner] * rng.uniform(0.6, 1.0, len(owner))
    x = np.clip(cx[owner] + rho * np.cos(theta), 0, WIDTH).round(2)
    y = np.clip(cy[owner] + rho * np.sin(theta), 0, HEIGHT).round(2)
    xy = np.empty(2 * len(owner))
    xy[0::2], xy[1::2] = x, y
    following = np.arange(len(owner)) + 1
    following[first + vertices - 1] = first
    area = np.abs(np.add.reduceat(x * y[following] - x[following] * y, first)) / 2
    x0, x1 = np.minimum.reduceat(x, first), np.maximum.reduceat(x, first)
    y0, y1 = np.minimum.reduceat(y, first), np.maximum.reduceat(y, first)
    boxes = np.stack([x0, y0, x1 - x0, y1 - y0], 1).round(2).tolist()
    polygons = np.split(xy, 2 * np.cumsum(vertices)[:-1])
    crowds = iter(crowd_counts(rng, int(crowd.sum())))
    polygon = iter(zip(polygons, area.round(2).tolist(), boxes, strict=True))
    annotations = []
    for i, (is_crowd, image, category) in enumerate(
        zip(crowd.tolist(), (image_of + 1).tolist(), categories.tolist(), strict=True)
    ):
        if is_crowd:
            counts = next(crowds)
            rle = {"counts": counts, "size": [HEIGHT, WIDTH]}
            bytes_rle = mask_utils.frPyObjects(rle, HEIGHT, WIDTH)
            segmentation, a = rle, float(mask_utils.area(bytes_rle))
            b = [float(v) for v in mask_utils.toBbox(bytes_rle)]
        else:
            part, a, b = next(polygon)
            segmentation = [part]
        annotations.append({
            "segmentation": segmentation, "area": a, "iscrowd": int(is_crowd), "image_id": image,
            "bbox": b, "category_id": category, "id": i + 1,
        })  # fmt: skip
    data = {
        "info": {"description": "COCO-train-sized, generated by benchmarks/scale.py"},
        "images": [
            {"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": HEIGHT, "width": WIDTH}
            for i in range(n_images)
        ],
        "annotations": annotations,
        "categories": [
            {"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORIES
        ],
    }
    raw = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    path.write_bytes(raw)
    return {"images": n_images, "objects": n_objects, "crowd": int(crowd.sum()), "bytes": len(raw)}


def image_folder(folder: Path, names: list[str], seed: int = 0) -> None:
    """Every name a hard link to one 640x480 JPEG (a blurred noise picture, ~50 KB); a copy of
    it per 60,000 names (ext4 links a file at most 65,000 times)."""
    folder.mkdir(parents=True, exist_ok=True)
    first = folder.parent / f".{folder.name}.0.jpg"
    if not first.exists():
        rng = np.random.default_rng(seed)
        noise = rng.normal(128, 40, (HEIGHT // 4, WIDTH // 4, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(noise).resize((WIDTH, HEIGHT), Image.BILINEAR).save(first, quality=90)
    for i, name in enumerate(names):
        one = folder.parent / f".{folder.name}.{i // 60000}.jpg"
        if not one.exists():
            shutil.copy(first, one)
        target = folder / name
        if not target.exists():
            os.link(one, target)


def val_set(directory: Path, n_images: int, per_image: int, cocoeval_images: int) -> dict:
    """gt.json (RLE GTs), proposals.h5 and, for COCOeval, results.json of the first images."""
    from ifcn.proposals.format import ProposalWriter  # not needed by the measured processes

    rng = np.random.default_rng(1)
    size = [HEIGHT, WIDTH]
    templates = []
    for _ in range(min(TEMPLATES, n_images)):
        gt = random_shapes(rng, max(1, int(rng.poisson(7))), HEIGHT, WIDTH)
        gt_counts = shape_rles(gt, HEIGHT, WIDTH)
        n_jitter = per_image * 2 // 5
        shapes = {
            key: np.concatenate([a, b])
            for (key, a), b in zip(
                jittered(gt, rng, n_jitter).items(),
                random_shapes(rng, per_image - n_jitter, HEIGHT, WIDTH).values(),
                strict=True,
            )
        }
        counts = shape_rles(shapes, HEIGHT, WIDTH)
        counts = [counts[j] for j in rng.permutation(per_image).tolist()]
        scores = np.sort(rng.random(per_image).astype(np.float32))[::-1]
        boxes = mask_utils.toBbox([{"size": size, "counts": c} for c in counts])
        boxes[:, 2:] += boxes[:, :2]
        crowd = rng.random(len(gt_counts)) < 0.03
        templates.append((gt_counts, crowd, counts, scores, boxes.astype(np.float32)))
    images, annotations, results = [], [], []
    paths = {"gt": directory / "val.json", "h5": directory / "proposals.h5",
             "results": directory / "results.json"}  # fmt: skip
    with ProposalWriter(paths["h5"], PROPOSAL_ATTRS) as writer:
        for i in range(n_images):
            image_id, name = 1_000_001 + i, f"val_{i:012d}.jpg"
            images.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
            gt_counts, crowd, counts, scores, boxes = templates[i % len(templates)]
            areas = mask_utils.area([{"size": size, "counts": c} for c in gt_counts])
            gt_boxes = mask_utils.toBbox([{"size": size, "counts": c} for c in gt_counts])
            for c, a, b, is_crowd in zip(gt_counts, areas.tolist(), gt_boxes.tolist(),
                                         crowd.tolist(), strict=True):  # fmt: skip
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": 1, "iscrowd": int(is_crowd), "area": float(a),
                                    "bbox": b, "segmentation": {"size": size,
                                                                "counts": c.decode()}})  # fmt: skip
            writer.add(image_id, name, HEIGHT, WIDTH, scores, boxes, counts,
                       np.zeros(per_image, np.int8))  # fmt: skip
            if i < cocoeval_images:
                results += [{"image_id": image_id, "category_id": 1, "score": s,
                             "segmentation": {"size": size, "counts": c.decode()}}
                            for c, s in zip(counts, scores.tolist(), strict=True)]  # fmt: skip
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "object"}]}  # fmt: skip
    paths["gt"].write_bytes(orjson.dumps(gt))
    paths["results"].write_bytes(orjson.dumps(results))
    (directory / "gt_subset.json").write_bytes(orjson.dumps({
        **gt, "images": images[:cocoeval_images],
        "annotations": [a for a in annotations if a["image_id"] <= 1_000_000 + cocoeval_images],
    }))  # fmt: skip
    paths["gt_subset"] = directory / "gt_subset.json"
    return paths


def candidate_shards(directory: Path, n_images: int, shards: int) -> list[Path]:
    """`shards` candidates.h5 files of one inference job over `n_images` images."""
    from ifcn.proposals.candidates import CandidateWriter, ImageCandidates

    rng = np.random.default_rng(2)
    records = [new_rank(network_outputs(rng)) for _ in range(10)]
    bounds = np.linspace(0, n_images, shards + 1).astype(int)
    paths = []
    for shard in range(shards):
        path = directory / f"candidates.{shard}.h5"
        with CandidateWriter(path, {**CANDIDATE_ATTRS, "shard": f"{shard}/{shards}"}) as writer:
            for i in range(bounds[shard], bounds[shard + 1]):
                found = records[i % len(records)]
                writer.add(ImageCandidates(i + 1, f"{i + 1}.jpg", 375, 500, **found))
        paths.append(path)
    return paths


# --- measuring ------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """Without launcher variables, so that a benchmark started inside a SLURM job runs alone."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "TORCHELASTIC_")) and key not in LAUNCH_VARIABLES
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def measure(command: list[str], cwd: Path = ROOT) -> dict:
    """Run a command to completion: wall seconds, the largest process's peak RSS and the peak
    over time of the PSS and RSS summed over the process and its descendants.

    The peak RSS is /usr/bin/time's (the wait4 figure of its child): a child forked from this
    process would count this process's pages until it execs."""
    peaks = {"tree_pss": 0, "tree_rss": 0}
    stop = threading.Event()
    maxrss = Path(tempfile.mkstemp(prefix="ifcn-maxrss-")[1])
    start = time.perf_counter()
    process = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(maxrss), *command],
                               cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)  # fmt: skip
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))
    reader.start()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not stop.is_set():
            pss = rss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        info = p.memory_full_info()
                        pss, rss = pss + info.pss, rss + info.rss
            except psutil.Error:
                pass
            peaks["tree_pss"] = max(peaks["tree_pss"], pss)
            peaks["tree_rss"] = max(peaks["tree_rss"], rss)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    process.wait()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    reader.join()
    text = b"".join(output).decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}\n{text[-3000:]}")
    peak_rss = int(maxrss.read_text().split()[-1]) * 1024
    maxrss.unlink()
    return {"seconds": wall, "peak_rss": peak_rss, **peaks, "output": text}


def srun_like(tasks: int) -> list[str]:
    """A prefix that starts a command as `tasks` processes the way an srun step does (its
    SLURM variables, one thread each as under torchrun, a free local port), with no launcher
    process besides a shell that waits for them; it fails when one of them fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = (
        f"export SLURM_STEP_NUM_TASKS={tasks} MASTER_ADDR=127.0.0.1 MASTER_PORT={port} "
        "OMP_NUM_THREADS=1; pids=(); "
        f'for r in $(seq 0 {tasks - 1}); do SLURM_PROCID=$r SLURM_LOCALID=$r "$@" & pids+=($!); '
        'done; rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc'
    )
    return ["bash", "-c", script, "srun-like"]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def ifcn(*args: str) -> list[str]:
    return [sys.executable, "-m", "ifcn", *args]


def train_config(folder: Path, train_json: Path, images: Path, val_json: Path, val_images: Path):
    """config/config.yaml (tiny backbone) on the generated files, one step."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["run"] = "scale"
    config["data"] = {"dataset": "coco2017", "root": str(folder),
                      "train_json": str(train_json), "train_images": str(images),
                      "val_json": str(val_json), "val_images": str(val_images)}  # fmt: skip
    config["train"].update(iters=1, checkpoint_period=1, log_period=1)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cocoeval_process(gt: str, results: str) -> None:
    """COCOeval as the paper's protocol needs it (segm, useCats=0, maxDets 10/100/1000)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt)
        coco_eval = COCOeval(coco, coco.loadRes(results), iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = [10, 100, 1000]
        coco_eval.evaluate()
        coco_eval.accumulate()


# --- the run ----------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ifcn-bench-scale-", dir=args.workdir) as tmp:
        work = Path(tmp)
        return run(args, work)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run(args: argparse.Namespace, work: Path) -> dict:
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "memory": _gib(psutil.virtual_memory().total),
                    "load_average_at_start": os.getloadavg()},
        "scale": args.scale, "workers": args.workers, "steps": {},
    }  # fmt: skip
    steps = report["steps"]
    lines: list[tuple[str, str, str]] = []  # figure, measured, target

    def step(name: str, command: list[str], cwd: Path = ROOT) -> dict:
        print(f"{name} ...", flush=True)
        steps[name] = measure(command, cwd)
        r = steps[name]
        print(f"  {r['seconds']:.1f} s, peak RSS {_gib(r['peak_rss'])}, "
              f"PSS of all its processes {_gib(r['tree_pss'])}", flush=True)  # fmt: skip
        return r

    t = time.perf_counter()
    train_json = work / "raw" / "train.json"
    train_json.parent.mkdir(parents=True)
    report["train_json"] = coco_train_json(train_json, args.scale)
    names = [f"{i + 1:012d}.jpg" for i in range(report["train_json"]["images"])]
    image_folder(work / "train_images", names)
    val = val_set(work / "raw", args.eval_images, args.proposals, args.cocoeval_images)
    image_folder(work / "val_images", [f"val_{i:012d}.jpg" for i in range(args.eval_images)])
    report["generation_seconds"] = time.perf_counter() - t
    print(f"generated {report['train_json']} in {report['generation_seconds']:.0f} s", flush=True)

    coco = step("COCO(train.json)", python("-c", "import sys; from pycocotools.coco import COCO; "
                                                 "COCO(sys.argv[1])", str(train_json)))  # fmt: skip
    base_s, base_mem = coco["seconds"], coco["peak_rss"]
    lines.append(("pycocotools COCO(train.json)", f"{base_s:.1f} s, {_gib(base_mem)}", "reference"))

    def ratio(name: str, r: dict, target: float) -> None:
        x = r["seconds"] / base_s
        lines.append((name, f"{r['seconds']:.1f} s = {x:.2f}x, {_gib(r['peak_rss'])}",
                      f"<= {target:g}x: {'met' if x <= target else 'NOT met'}"))  # fmt: skip

    workers = str(args.workers)
    if "check" not in args.skip:
        r = step("data check", ifcn("data", "check", "--json", str(train_json), "--images",
                                    str(work / "train_images"), "--workers", workers))  # fmt: skip
        ratio("ifcn data check", r, 3)
    converted, converted_val = work / "converted" / "train.json", work / "converted" / "val.json"
    r = step("data convert", ifcn("data", "convert", "--format", "coco", "--json",
                                  str(train_json), "--images", str(work / "train_images"),
                                  "--out", str(converted), "--workers", workers))  # fmt: skip
    ratio("ifcn data convert --format coco", r, 3)
    step("data convert (val)", ifcn("data", "convert", "--format", "coco", "--json",
                                    str(val["gt"]), "--images", str(work / "val_images"),
                                    "--out", str(converted_val), "--workers", workers))  # fmt: skip
    report["bytes"] = {
        "raw_json": train_json.stat().st_size,
        "converted_json": converted.stat().st_size,
        "record": (converted.parent / "train.json.checked.h5").stat().st_size,
    }
    config = train_config(work, converted, work / "train_images", converted_val,
                          work / "val_images")  # fmt: skip
    if "train" not in args.skip:
        one = step("train, 1 rank", ifcn("train", "--config", str(config), "--out",
                                         str(work / "run1"), "--device", "cpu"))  # fmt: skip
        ratio("ifcn train --iters 1: start to first step", one, 2)
        lines.append(("  its peak memory per rank", _gib(one["peak_rss"]),
                      f"<= COCO()'s {_gib(base_mem)}: "
                      f"{'met' if one['peak_rss'] <= base_mem else 'NOT met'}"))  # fmt: skip
        if "torchrun" not in args.skip:
            launcher = python("-m", "torch.distributed.run", "--standalone",
                              "--nproc-per-node", "2", "-m", "ifcn")  # fmt: skip
            two = step("train, 2 ranks", [*launcher, "train", "--config", str(config), "--out",
                                          str(work / "run2"), "--device", "cpu"])  # fmt: skip
            x = two["tree_pss"] / one["tree_pss"]
            lines.append(("ifcn train, torchrun 2 ranks: PSS of all processes",
                          f"{_gib(two['tree_pss'])} = {x:.2f}x one rank's "
                          f"{_gib(one['tree_pss'])} ({two['seconds']:.1f} s)",
                          f"<= 1.5x: {'met' if x <= 1.5 else 'NOT met'}"))  # fmt: skip
            # the same two ranks as srun starts them, without torchrun's launcher process (it
            # imports torch: ~0.3 GiB of the figure above that no rank holds)
            tasks = step("train, 2 tasks", [*srun_like(2), *ifcn(
                "train", "--config", str(config), "--out", str(work / "run3"), "--device",
                "cpu")])  # fmt: skip
            x = tasks["tree_pss"] / one["tree_pss"]
            lines.append(("  the same 2 ranks without a launcher (as srun starts them)",
                          f"{_gib(tasks['tree_pss'])} = {x:.2f}x ({tasks['seconds']:.1f} s)",
                          "reported"))  # fmt: skip
            # ifcn's own launcher: the ranks forked after the imports, which they share
            forked = step("train, 2 ranks forked", ifcn(
                "train", "--config", str(config), "--out", str(work / "run4"), "--device",
                "cpu", "--nproc-per-node", "2"))  # fmt: skip
            x = forked["tree_pss"] / one["tree_pss"]
            lines.append(("ifcn train --nproc-per-node 2: PSS of all processes",
                          f"{_gib(forked['tree_pss'])} = {x:.2f}x ({forked['seconds']:.1f} s)",
                          f"<= 1.5x: {'met' if x <= 1.5 else 'NOT met'}"))  # fmt: skip
    if "unchecked" not in args.skip:
        unchecked = work / "unchecked" / "train.json"
        unchecked.parent.mkdir()
        shutil.copy(converted, unchecked)  # the same file without its record beside it
        config_u = train_config(work / "unchecked", unchecked, work / "train_images",
                                converted_val, work / "val_images")  # fmt: skip
        for k in (1, 2):
            out = str(work / "run_unchecked")
            command = ifcn("train", "--config", str(config_u), "--out", out, "--device", "cpu",
                           "--resume", "auto")  # fmt: skip
            r = step(f"train, never checked, start {k}", command)
            how = "validates fully" if k == 1 else "reads the run folder's record"
            lines.append((f"ifcn train on a JSON never checked, start {k}",
                          f"{r['seconds']:.1f} s = {r['seconds'] / base_s:.2f}x, "
                          f"{_gib(r['peak_rss'])}", how))  # fmt: skip
    if "evaluate" not in args.skip:
        r = step("evaluate", ifcn("evaluate", "--gt", str(converted_val), "--proposals",
                                  str(val["h5"]), "--out", str(work / "eval" / "ar.json"),
                                  "--workers", "2"))  # fmt: skip
        ok = r["seconds"] <= 60 and r["tree_pss"] <= 4 * 2**30
        lines.append((f"ifcn evaluate, {args.eval_images} images x {args.proposals} proposals, "
                      "2 workers", f"{r['seconds']:.1f} s, PSS of all processes "
                      f"{_gib(r['tree_pss'])} (largest process {_gib(r['peak_rss'])})",
                      f"<= 60 s, <= 4 GB: {'met' if ok else 'NOT met'}"))  # fmt: skip
        report["bytes"]["proposals_h5"] = val["h5"].stat().st_size
        per_image = val["h5"].stat().st_size / args.eval_images
        lines.append((
            f"proposals.h5 for train2017 at {args.proposals} per image",
            f"{per_image * TRAIN_IMAGES / 2**30:.1f} GiB ({per_image / 1e3:.0f} kB per image "
            f"measured on {args.eval_images} images, x 118,287)", "reported",
        ))  # fmt: skip
    if "cocoeval" not in args.skip and args.cocoeval_images:
        n = min(args.cocoeval_images, args.eval_images)
        r = step("COCOeval", python(__file__, "--cocoeval", str(val["gt_subset"]),
                                    str(val["results"])))  # fmt: skip
        factor = args.eval_images / n
        lines.append((f"COCOeval, {n} images x {args.proposals} (results JSON in memory)",
                      f"{r['seconds']:.1f} s, {_gib(r['peak_rss'])}; scaled x{factor:g}: "
                      f"{r['seconds'] * factor:.0f} s, {_gib(r['peak_rss'] * factor)}",
                      "reference"))  # fmt: skip
    if "plan" not in args.skip:
        plan = work / "plan"
        plan.mkdir()
        coco_config = yaml.safe_load((ROOT / "config" / "coco.yaml").read_text())
        coco_config["infer"]["shards"] = 64
        (plan / "coco64.yaml").write_text(yaml.safe_dump(coco_config))
        r = step("snakemake -n", [shutil.which("snakemake") or "snakemake", "-n",
                                  "--snakefile", str(ROOT / "Snakefile"), "--directory", str(plan),
                                  "--configfile", str(plan / "coco64.yaml"), "--cores", "2"],
                 cwd=plan)  # fmt: skip
        jobs = re.search(r"^total\s+(\d+)", r["output"], re.M)
        lines.append(("snakemake -n --configfile config/coco.yaml, infer.shards: 64",
                      f"{r['seconds']:.1f} s ({jobs[1] if jobs else '?'} jobs planned)",
                      "reported"))  # fmt: skip
    if "merge" not in args.skip:
        shards = candidate_shards(work / "raw", args.merge_images, args.shards)
        size = sum(p.stat().st_size for p in shards)
        r = step("merge", ifcn("merge", "--inputs", *map(str, shards), "--out",
                               str(work / "candidates.h5")))  # fmt: skip
        scaled = r["seconds"] * args.eval_images / args.merge_images
        lines.append((f"ifcn merge of {args.shards} candidates.h5 shards, {args.merge_images} "
                      "images", f"{r['seconds']:.1f} s, {_gib(r['peak_rss'])}, "
                      f"{size / 2**30:.2f} GiB in; x{args.eval_images / args.merge_images:g} for "
                      f"{args.eval_images} images: {scaled:.0f} s", "reported"))  # fmt: skip

    report["load_average_at_end"] = os.getloadavg()
    report["figures"] = [{"figure": f, "measured": m, "target": t} for f, m, t in lines]
    for entry in steps.values():
        entry.pop("output", None)
    width = max(len(f) for f, _, _ in lines)
    print(f"\nCOCO-sized data at scale {args.scale:g} ({report['train_json']['images']} images, "
          f"{report['train_json']['objects']} objects, "
          f"{report['train_json']['bytes'] / 2**20:.0f} MiB JSON):")  # fmt: skip
    for figure, measured, target in lines:
        print(f"  {figure:<{width}}  {measured}  [{target}]")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cocoeval"]:
        cocoeval_process(*sys.argv[2:4])
    else:
        main(get_args_parser().parse_args())
