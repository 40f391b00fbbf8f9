"""Post-processing per image at the paper's settings, on one core: everything but the network.

A 375×500 image through the paper's six scales (600·1.5^{-4..1}, longer side capped at 1500)
with the shapes of VGG-16's outputs (feature maps at stride 8, k = 5, m = 21), pre_nms_topk 1000
per scale and N = 1000 proposals. The network is replaced by random score maps and objectness:
smooth random fields (Gaussian noise on a 4× coarser grid, bilinearly upsampled, as conv
outputs are smooth; logits of standard deviation ~4 and ~3), fresh for every image. Steps:

- rank: each scale's windows ranked by objectness, its score maps to float16 on the host;
- write_candidates, read_candidates (the masks of the kept windows assembled from the maps);
- nms: tight boxes of ~6000 resized masks, box NMS, the kept masks at image size as COCO RLE;
- write_proposals.

Reported per step: median CPU seconds (one thread; the process is pinned to one CPU) and wall
seconds over `--images` images, their total against the target (≤ 0.4 s), and the candidates'
bytes per image (target ≤ 1.5 MB). Beside them, ifcn 0.1's path on the same score maps: masks
assembled at inference and stored (float16, uncompressed), and the NMS of
tests/proposals/reference_nms.py; its NMS on the new candidates must give identical proposals
(masks, boxes, order), which the benchmark checks on every image. ifcn 0.1's own proposals
differ where float16 score maps move a mask pixel across the threshold (AR equal to 0.001:
tests/proposals/test_resample.py); the share of identical masks is reported.

    python benchmarks/postprocess.py --out results/bench/postprocess.json [--images 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/proposals/reference_nms.py: ifcn 0.1's NMS

from ifcn.assemble import assemble_sparse  # noqa: E402
from ifcn.config import defaults  # noqa: E402
from ifcn.data.image import resized_shape  # noqa: E402
from ifcn.proposals.candidates import Candidates, CandidateWriter, ImageCandidates  # noqa: E402
from ifcn.proposals.format import ProposalWriter  # noqa: E402
from ifcn.proposals.suppression import nms_image  # noqa: E402
from ifcn.windows import rank_windows, window_boxes  # noqa: E402
from tests.proposals import reference_nms  # noqa: E402

SCALES = [round(600 * 1.5**e) for e in range(-4, 2)]  # 119, 178, 267, 400, 600, 900
HEIGHT, WIDTH, MAX_SIZE, K, M, TOPK, TOP_N = 375, 500, 1500, 5, 21, 1000, 1000
TARGET_SECONDS, TARGET_BYTES = 0.4, 1.5e6
ATTRS = {"config": "{}", "checkpoint_sha256": "0" * 64, "dataset": "bench", "scales": SCALES,
         "max_size": MAX_SIZE, "k": K, "m": M, "head": "instancefcn", "pre_nms_topk": TOPK,
         "shard": "0/1"}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/postprocess.json"))
    parser.add_argument("--images", type=int, default=5, help="images measured (medians)")
    return parser


def network_outputs(rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Per scale: score maps [k², h, w], objectness [h, w] (logits) and the resize factor."""
    outputs = []
    for side in SCALES:
        height, width, factor = resized_shape(HEIGHT, WIDTH, side, MAX_SIZE)
        size = (-(-height // 8), -(-width // 8))
        outputs.append((field(rng, K * K, size, 4.0), field(rng, 1, size, 3.0)[0], factor))
    return outputs


def field(rng: np.random.Generator, channels: int, size: tuple, amplitude: float) -> torch.Tensor:
    """A smooth random field: noise on a 4× coarser grid, bilinearly upsampled."""
    low = torch.from_numpy(rng.normal(size=(1, channels, size[0] // 4 + 2, size[1] // 4 + 2)))
    up = torch.nn.functional.interpolate(low.float(), size=size, mode="bilinear")
    return up[0] * amplitude


class Clock:
    """CPU and wall seconds of named steps."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def __call__(self, name: str, fn, *args):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn(*args)
        self.cpu[name] = time.process_time() - cpu
        self.wall[name] = time.perf_counter() - wall
        return result


def new_rank(outputs) -> dict:
    """What inference keeps now: the ranked windows and the float16 score maps."""
    tops, logits, scale, maps, sizes = [], [], [], [], []
    for index, (scores, objectness, _) in enumerate(outputs):
        top, logit = rank_windows(objectness, M, TOPK)
        tops.append(top.numpy())
        logits.append(logit.numpy())
        scale.append(np.full(len(top), index, np.int8))
        maps.append(scores.half().numpy())
        sizes.append(objectness.shape)
    return {"tops": np.concatenate(tops), "objectness": np.concatenate(logits),
            "scale": np.concatenate(scale), "maps": maps, "map_sizes": np.array(sizes),
            "resize": np.array([f for _, _, f in outputs]), "m": M}  # fmt: skip


def old_rank(outputs) -> dict:
    """What inference kept in ifcn 0.1: assembled masks (float16) and window boxes."""
    masks, boxes, logits, scale = [], [], [], []
    for index, (scores, objectness, factor) in enumerate(outputs):
        tops, logit = rank_windows(objectness, M, TOPK)
        masks.append(assemble_sparse(scores, tops, M, fill=float("-inf")).sigmoid().half())
        boxes.append(window_boxes(tops, M, factor))
        logits.append(logit)
        scale.append(np.full(len(tops), index, np.int8))
    return {"masks": torch.cat(masks).numpy(), "boxes": torch.cat(boxes).numpy(),
            "objectness": torch.cat(logits).numpy(), "scale": np.concatenate(scale)}  # fmt: skip


class OldRecord:
    """The fields the NMS reads, as ifcn 0.1's candidates reader returned them."""

    def __init__(self, image_id, file_name, height, width, masks, boxes, objectness, scale):
        self.image_id, self.file_name, self.height, self.width = image_id, file_name, height, width
        self.masks, self.boxes, self.objectness, self.scale = masks, boxes, objectness, scale


def write_old_candidates(path: Path, found: dict) -> None:
    """candidates.h5 as ifcn 0.1 wrote it (its columns, chunking and no compression)."""
    with h5py.File(path, "w") as f:
        group = f.create_group("candidates")
        group.create_dataset("masks", data=found["masks"], chunks=(256, M, M))
        group.create_dataset(
            "boxes", data=found["boxes"], chunks=(min(8192, len(found["boxes"])), 4)
        )
        group.create_dataset("objectness", data=found["objectness"])
        group.create_dataset("scale", data=found["scale"])


def read_old_candidates(path: Path) -> OldRecord:
    with h5py.File(path, "r") as f:
        columns = {name: f["candidates"][name][:] for name in f["candidates"]}
    return OldRecord(1, "bench.png", HEIGHT, WIDTH, columns["masks"], columns["boxes"],
                     columns["objectness"], columns["scale"])  # fmt: skip


def same_proposals(a: dict, b: dict) -> bool:
    return a["rles"] == b["rles"] and all(
        np.array_equal(a[key], b[key]) for key in ("scores", "boxes", "scales")
    )


def measure_image(rng: np.random.Generator, folder: Path) -> dict:
    outputs = network_outputs(rng)
    new, old = Clock(), Clock()
    # the new path
    found = new("rank", new_rank, outputs)
    record = ImageCandidates(1, "bench.png", HEIGHT, WIDTH, **found)
    candidates = folder / "candidates.h5"

    def write_candidates():
        with CandidateWriter(candidates, ATTRS) as writer:
            writer.add(record)

    def read_candidates():
        with Candidates(candidates) as reader:
            read = reader.read(0)
            assert read.masks.shape[1:] == (M, M)  # assembled here, once
            return read

    new("write_candidates", write_candidates)
    read = new("read_candidates", read_candidates)
    result = new("nms", nms_image, read, defaults("nms") | {"top_n": TOP_N})

    def write_proposals(found_proposals):
        with ProposalWriter(folder / "proposals.h5", ATTRS) as writer:
            writer.add(**found_proposals)

    new("write_proposals", write_proposals, result)
    new_bytes = candidates.stat().st_size
    # ifcn 0.1's path on the same outputs
    found_old = old("rank", old_rank, outputs)
    old_path = folder / "old.h5"
    old("write_candidates", write_old_candidates, old_path, found_old)
    read_old = old("read_candidates", read_old_candidates, old_path)
    result_old = old("nms", reference_nms.nms_image, read_old, 0.8, TOP_N, 0.5)
    old("write_proposals", write_proposals, result_old)
    reference_on_new = reference_nms.nms_image(read, 0.8, TOP_N, 0.5)
    return {
        "new_cpu": new.cpu, "new_wall": new.wall, "old_cpu": old.cpu, "old_wall": old.wall,
        "candidates": len(record), "proposals": len(result["rles"]),
        "candidates_bytes": new_bytes, "old_candidates_bytes": old_path.stat().st_size,
        "identical_to_reference_nms": same_proposals(result, reference_on_new),
        "same_as_old_path": same_proposals(result, result_old),
        "masks_shared_with_old_path": len(set(result["rles"]) & set(result_old["rles"]))
        / max(len(result["rles"]), 1),
    }  # fmt: skip


def main(args: argparse.Namespace) -> dict:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        measure_image(np.random.default_rng(99), Path(tmp))  # warm-up
        images = [measure_image(rng, Path(tmp)) for _ in range(args.images)]

    def median(key: str) -> dict[str, float]:
        return {step: statistics.median(i[key][step] for i in images) for step in images[0][key]}

    new_cpu, old_cpu = median("new_cpu"), median("old_cpu")
    result = {
        "image": [HEIGHT, WIDTH], "scales": SCALES, "max_size": MAX_SIZE, "k": K, "m": M,
        "pre_nms_topk": TOPK, "top_n": TOP_N, "images": args.images,
        "candidates": images[0]["candidates"],
        "proposals": statistics.median(i["proposals"] for i in images),
        "cpu_seconds": new_cpu, "wall_seconds": median("new_wall"),
        "total_cpu_seconds": sum(new_cpu.values()),
        "total_wall_seconds": sum(median("new_wall").values()),
        "target_seconds": TARGET_SECONDS,
        "old_cpu_seconds": old_cpu, "old_total_cpu_seconds": sum(old_cpu.values()),
        "speedup_vs_old": sum(old_cpu.values()) / sum(new_cpu.values()),
        "candidates_bytes_per_image": statistics.median(i["candidates_bytes"] for i in images),
        "old_candidates_bytes_per_image": statistics.median(
            i["old_candidates_bytes"] for i in images),
        "target_candidates_bytes": TARGET_BYTES,
        "identical_to_reference_nms": all(i["identical_to_reference_nms"] for i in images),
        "images_identical_to_old_path": sum(i["same_as_old_path"] for i in images),
        "masks_shared_with_old_path": statistics.median(
            i["masks_shared_with_old_path"] for i in images),
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    steps = ", ".join(f"{k} {v:.3f}" for k, v in new_cpu.items())
    print(
        f"post-processing per image (one core, CPU s): {steps}; total "
        f"{result['total_cpu_seconds']:.3f} s (wall {result['total_wall_seconds']:.3f}; target "
        f"<= {TARGET_SECONDS}); ifcn 0.1 {result['old_total_cpu_seconds']:.3f} s "
        f"({result['speedup_vs_old']:.1f}x); {result['candidates']} candidates -> "
        f"{result['proposals']:.0f} proposals; NMS identical to the reference: "
        f"{result['identical_to_reference_nms']}"
    )
    old_mb = result["old_candidates_bytes_per_image"] / 1e6
    print(
        f"candidates per image: {result['candidates_bytes_per_image'] / 1e6:.2f} MB (target <= "
        f"{TARGET_BYTES / 1e6}); ifcn 0.1 stored {old_mb:.2f} MB; images whose proposals equal "
        f"ifcn 0.1's exactly (float16 maps): "
        f"{result['images_identical_to_old_path']}/{args.images}, masks also in ifcn 0.1's "
        f"proposals: {result['masks_shared_with_old_path']:.0%}"
    )
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
