"""Training speed: the default config with 1 and 2 processes, and the paper's VGG-16 at 600 px.

Every figure comes from real `ifcn train` runs on the CPU (subprocesses, so that each starts
clean), read back from their train_log.csv, whose rows hold per-step means over the ranks of
``data_seconds`` (waiting for the sample) and ``seconds`` (the whole step):

- default config (config/config.yaml: tiny backbone, scales 192..544): iterations/s and images/s
  with 1 process and with `torchrun --nproc-per-node 2` (gloo), as PROCESSESxTHREADS: 1 process
  with all cores' intra-op threads, 1 process with 1 thread, 2 processes with 1 thread each
  (torchrun's own default). On a 2-core machine the 2-process figure measures data parallelism
  on the same cores, not extra hardware, and on a busy one the 2-thread process suffers most
  from the other load. A step of 2 processes takes 2 images: images/s is the figure to compare.
- VGG-16 as in the paper (random weights, head_channels 512, k = 5, shorter side 600 px; the
  synthetic images are upscaled to it): seconds per iteration, with the share spent loading
  and resizing the sample (``--vgg-workers 0`` by default, so the load is not hidden behind
  the previous step) against forward, loss, backward and the SGD step.

The steps before ``--warmup`` (first calls, allocator growth) are left out of the means; the
process start-up is reported apart as ``wall_seconds``. Shorten with ``--iters``,
``--vgg-iters`` or ``--skip vgg16``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from ifcn.atomic import write_text
from ifcn.config import defaults
from ifcn.data.synth import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
CORES = torch.get_num_threads()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="results/bench/train.json")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--iters", type=int, default=30, help="measured steps (default config)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the means")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[f"1x{CORES}", "1x1", "2x1"],
        help="default-config runs as PROCESSESxTHREADS (intra-op threads per process)",
    )
    parser.add_argument("--vgg-iters", type=int, default=3, help="measured steps (VGG-16)")
    parser.add_argument("--vgg-warmup", type=int, default=1)
    parser.add_argument("--vgg-scale", type=int, default=600, help="shorter side (paper: 600)")
    parser.add_argument("--vgg-workers", type=int, default=0)
    parser.add_argument("--images", type=int, default=24, help="synthetic training images")
    parser.add_argument("--skip", nargs="*", default=[], choices=["default", "vgg16"])
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    return parser


def _env(threads: int) -> dict[str, str]:
    """Without launcher variables, so that a benchmark started inside a SLURM job runs alone."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "TORCHELASTIC_")) and key not in LAUNCH_VARIABLES
    }
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _write_config(base: dict, data: Path, folder: Path, model: dict, train: dict) -> Path:
    config = json.loads(json.dumps(base))
    config["data"].update(
        root=str(data),
        train_json=str(data / "train.json"),
        train_images=str(data / "images"),
        val_json=str(data / "val.json"),
        val_images=str(data / "images"),
    )
    config["model"].update(model)
    config["train"].update(train)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def time_training(
    config: Path, out: Path, processes: int, threads: int, warmup: int, workers: int | None
) -> dict:
    """One `ifcn train` run; per-step means after the warm-up, from its train_log.csv."""
    command = ["-m", "ifcn", "train", "--config", str(config), "--out", str(out)]
    command += ["--device", "cpu"]
    if workers is not None:
        command += ["--workers", str(workers)]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone"]
        command = launcher + ["--nproc-per-node", str(processes)] + command
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *command], env=_env(threads), cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"ifcn train failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    log = pd.read_csv(out / "train_log.csv")
    steps = log[log["iteration"] > warmup]
    seconds = float(steps["seconds"].mean())
    data_seconds = float(steps["data_seconds"].mean())
    return {
        "processes": processes,
        "threads_per_process": threads,
        "measured_steps": len(steps),
        "seconds_per_iter": seconds,
        "iters_per_s": 1.0 / seconds,
        "images_per_s": processes / seconds,
        "data_seconds_per_iter": data_seconds,
        "data_share": data_seconds / seconds,
        "compute_share": 1.0 - data_seconds / seconds,
        "wall_seconds": wall,
    }


def main(args: argparse.Namespace) -> dict:
    base = yaml.safe_load(Path(args.config).read_text())
    with tempfile.TemporaryDirectory(prefix="ifcn-bench-train-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        data = work / "data"
        if not (data / "train.json").exists():
            synth = dict(base["data"]["synth"], num_train=args.images, num_val=1)
            generate_dataset(data, defaults("data.synth") | synth)
        result: dict = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "torch": torch.__version__,
                "load_average_at_start": os.getloadavg(),
            }
        }
        if "default" not in args.skip:
            iters = args.warmup + args.iters
            config = _write_config(
                base,
                data,
                work / "default",
                model={},
                train={"iters": iters, "log_period": 1, "checkpoint_period": iters},
            )
            runs = {}
            for name in args.runs:
                processes, threads = (int(n) for n in name.split("x"))
                out = work / "default" / f"run{name}"
                r = time_training(config, out, processes, threads, args.warmup, None)
                runs[name] = r
                print(
                    f"default config, {processes} process(es) x {threads} thread(s): "
                    f"{r['iters_per_s']:.2f} it/s, {r['images_per_s']:.2f} images/s "
                    f"({r['seconds_per_iter'] * 1e3:.0f} ms/it, data wait {r['data_share']:.0%})"
                )
            result["default_config"] = {
                "config": str(args.config),
                "scales": base["train"]["scales"],
                "runs": runs,
            }
            two = runs.get("2x1")
            for name in (f"1x{CORES}", "1x1"):
                if two and name in runs:
                    ratio = two["images_per_s"] / runs[name]["images_per_s"]
                    result["default_config"][f"images_per_s_2x1_vs_{name}"] = ratio
                    print(f"2 processes x 1 thread vs {name}: {ratio:.2f}x the images per second")
        if "vgg16" not in args.skip:
            iters = args.vgg_warmup + args.vgg_iters
            config = _write_config(
                base,
                data,
                work / "vgg16",
                model={"backbone": "vgg16", "pretrained": False, "head_channels": 512, "k": 5},
                train={
                    "iters": iters,
                    "log_period": 1,
                    "checkpoint_period": iters,
                    "scales": [args.vgg_scale],
                    "max_size": 1000,
                },
            )
            out = work / "vgg16" / "run"
            r = time_training(config, out, 1, CORES, args.vgg_warmup, args.vgg_workers)
            r.update(scale=args.vgg_scale, workers=args.vgg_workers)
            result["vgg16"] = r
            print(
                f"vgg16 at {args.vgg_scale} px, 1 process: {r['seconds_per_iter']:.2f} s/it, "
                f"data loading {r['data_share']:.1%}, forward/backward/step "
                f"{r['compute_share']:.1%}"
            )
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
