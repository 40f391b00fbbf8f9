"""Dense assembling vs a plain copy of the same number of output bytes, measured in one run.

The assembling module only copies: for a 75×100 feature map (a 600×800 image at stride 8),
k = 5 and m = 21 it writes m²·H·W values. Its time is reported as a ratio to `Tensor.copy_` of
as many bytes, both into buffers allocated once (a fresh 12 MB buffer is zeroed by the kernel
page by page on first touch, which costs about as much as the copy), interleaving the two
measurements so machine load hits both alike: 5 rounds of `--repeats` interleaved pairs, each
round's ratio of medians, and the median of the 5 rounds (target ≤ 1.5). The same with a fresh
buffer for each call (`torch.empty` in assembling, `clone` for the copy) is reported beside it.
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
    parser.add_argument("--repeats", type=int, default=40, help="pairs per round (5 rounds)")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    scores = torch.randn(args.k * args.k, args.height, args.width)
    numel = args.m * args.m * args.height * args.width
    source, target = torch.randn(numel), torch.empty(numel)
    buffer = torch.empty(args.m, args.m, args.height, args.width)
    pairs = {
        "preallocated": (lambda: assemble_dense(scores, args.m, out=buffer),
                         lambda: target.copy_(source)),
        "fresh_buffer": (lambda: assemble_dense(scores, args.m), source.clone),
    }  # fmt: skip
    for dense_call, copy_call in pairs.values():
        for _ in range(10):
            dense_call()
            copy_call()
    figures = {}
    for name, (dense_call, copy_call) in pairs.items():
        rounds = []
        for _ in range(5):
            dense_times, copy_times = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                dense_call()
                t1 = time.perf_counter()
                copy_call()
                t2 = time.perf_counter()
                dense_times.append(t1 - t0)
                copy_times.append(t2 - t1)
            rounds.append((statistics.median(dense_times), statistics.median(copy_times)))
        ratios = [d / c for d, c in rounds]
        dense, copy = rounds[ratios.index(statistics.median(ratios))]
        figures[name] = {"dense_ms": dense * 1e3, "copy_ms": copy * 1e3,
                         "ratio": statistics.median(ratios), "round_ratios": ratios}  # fmt: skip
    result = {
        "feature_map": [args.height, args.width],
        "k": args.k,
        "m": args.m,
        "output_mbytes": numel * 4 / 2**20,
        "threads": args.threads,
        **figures["preallocated"],
        "fresh_buffer": figures["fresh_buffer"],
        "target_ratio": 1.5,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    main_figures, fresh = figures["preallocated"], figures["fresh_buffer"]
    print(
        f"dense assembling {main_figures['dense_ms']:.2f} ms vs copy of the same"
        f" {result['output_mbytes']:.1f} MB {main_figures['copy_ms']:.2f} ms:"
        f" ratio {main_figures['ratio']:.2f}, median of 5 rounds"
        f" ({', '.join(f'{r:.2f}' for r in main_figures['round_ratios'])}; target <= 1.5);"
        f" into fresh buffers {fresh['ratio']:.2f}"
    )
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
