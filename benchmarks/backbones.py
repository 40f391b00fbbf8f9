"""Forward time of each backbone on one 600×800 image (shorter side 600 px), in one run.

The backbones (default: tiny, efficientnet_lite0, vgg16) run at stride 8 as the model uses
them, in eval mode without gradients, on the threads torch is given. Rounds interleave the
backbones (each is timed once per round, in turn), so load from elsewhere on a shared machine
hits all of them alike; after one warm-up round each backbone's median over ``--rounds`` is
reported, wall and process CPU time, and the ratios of their medians: ratios are only compared
within one run. ``--threads`` sets torch's intra-op threads (default: torch's, all cores); on a
busy machine one thread gives CPU times that two spinning threads would inflate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ifcn.model.backbone import build_backbone


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="results/bench/backbones.json")
    parser.add_argument("--backbones", nargs="+", default=["tiny", "efficientnet_lite0", "vgg16"])
    parser.add_argument("--size", type=int, nargs=2, default=[600, 800], metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: all)")
    return parser


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbones = {name: build_backbone(name).eval() for name in args.backbones}
    image = torch.randn(1, 3, *args.size)
    wall = {name: [] for name in backbones}
    cpu = {name: [] for name in backbones}
    with torch.inference_mode():
        for round_ in range(args.rounds + 1):
            for name, backbone in backbones.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                features = backbone(image)
                if round_:  # the first round warms up
                    wall[name].append(time.perf_counter() - start_wall)
                    cpu[name].append(time.process_time() - start_cpu)
    result = {
        "image": list(args.size),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "feature_map": list(features.shape[-2:]),
        "backbones": {
            name: {
                "out_channels": backbones[name].out_channels,
                "parameters": sum(p.numel() for p in backbones[name].parameters()),
                "forward_s": statistics.median(wall[name]),
                "forward_cpu_s": statistics.median(cpu[name]),
                "forward_s_all": wall[name],
            }
            for name in backbones
        },
    }
    names = list(backbones)
    result["ratios"] = {
        f"{a}/{b}": result["backbones"][a]["forward_s"] / result["backbones"][b]["forward_s"]
        for a in names
        for b in names
        if a != b
    }
    result["cpu_ratios"] = {
        f"{a}/{b}": result["backbones"][a]["forward_cpu_s"]
        / result["backbones"][b]["forward_cpu_s"]
        for a in names
        for b in names
        if a != b
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name in names:
        entry = result["backbones"][name]
        print(
            f"{name:20s} forward {entry['forward_s']:.3f} s (CPU {entry['forward_cpu_s']:.3f} s), "
            f"{entry['parameters'] / 1e6:.2f}M parameters, {entry['out_channels']} channels"
        )
    for pair, ratio in result["ratios"].items():
        print(f"{pair}: {ratio:.2f} (CPU {result['cpu_ratios'][pair]:.2f})")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
