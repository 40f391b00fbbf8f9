"""Dense assembling vs a plain copy of the same number of output bytes, measured in one run.

The assembling module only copies: for a 75×100 feature map (a 600×800 image at stride 8),
k = 5 and m = 21 it writes m²·H·W values. Its time is reported as a ratio to `Tensor.copy_` of
as many bytes, interleaving the two measurements so machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ifcn.assemble import assemble_dense


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="results/bench/assemble.json")
    parser.add_argument("--height", type=int, default=75)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--m", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    scores = torch.randn(args.k * args.k, args.height, args.width)
    numel = args.m * args.m * args.height * args.width
    source, target = torch.randn(numel), torch.empty(numel)
    for _ in range(10):
        assemble_dense(scores, args.m)
        target.copy_(source)
    dense_times, copy_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        assemble_dense(scores, args.m)
        t1 = time.perf_counter()
        target.copy_(source)
        t2 = time.perf_counter()
        dense_times.append(t1 - t0)
        copy_times.append(t2 - t1)
    dense, copy = statistics.median(dense_times), statistics.median(copy_times)
    result = {
        "feature_map": [args.height, args.width],
        "k": args.k,
        "m": args.m,
        "output_mbytes": numel * 4 / 2**20,
        "threads": args.threads,
        "dense_ms": dense * 1e3,
        "copy_ms": copy * 1e3,
        "ratio": dense / copy,
        "target_ratio": 2.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"dense assembling {dense * 1e3:.2f} ms vs copy of the same"
        f" {result['output_mbytes']:.1f} MB {copy * 1e3:.2f} ms:"
        f" ratio {result['ratio']:.2f} (target <= 2)"
    )
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
