"""Per-image inference time: the network's forward pass vs everything else, in one run.

A 500×375 image goes through the paper's six scales (600·1.5^{-4..1}, longer side capped at
1500) with randomly initialised weights, for the default configuration (config/config.yaml,
tiny backbone) and for the paper's VGG-16 (head_channels 512, k = 5). Reported per image:

- network forward, split into backbone, instance branch and objectness branch (summed over
  scales, timed by calling the model's parts in turn, exactly what ``forward`` does);
- everything else: resizing and normalising, ranking the windows and keeping the score maps
  (measured in the same instrumented pass), writing candidates.h5, NMS (assembling the kept
  windows, tight boxes, box NMS, the kept masks at image size as RLE) and writing proposals.h5
  (benchmarks/postprocess.py measures these at the paper's settings on one core);
- ratio_pipeline_to_forward = (end-to-end ``infer_image`` + candidate writing + ``nms_image``
  + proposal writing) / network forward. The target for VGG-16 on CPU is ≤ 1.15. On a shared
  machine the two forward passes it compares can differ by more than the overhead, so
- ratio_from_breakdown = (network forward + the other steps of the instrumented pass + writing
  + NMS) / network forward is reported too: the same quantity from one forward pass.

Measurements of one configuration are interleaved (instrumented pass, then end-to-end pass) so
machine load hits both alike; medians over ``--repeats`` after one warm-up pass.

For the default model, `ifcn infer`'s loop over a folder of JPEGs is also timed with 0 and 2
DataLoader workers: the share of its time spent waiting for decoded images (data_share).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ifcn.config import defaults, load_config
from ifcn.data.image import image_tensor, resize_image
from ifcn.model import build_model
from ifcn.proposals.candidates import Candidates, CandidateWriter, ImageCandidates
from ifcn.proposals.format import ProposalWriter
from ifcn.proposals.inference import infer_image, run_inference
from ifcn.proposals.suppression import nms_image, torch_threads
from ifcn.windows import rank_windows

PAPER_SCALES = [round(600 * 1.5**e) for e in range(-4, 2)]  # 119, 178, 267, 400, 600, 900
ROOT = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="results/bench/inference.json")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--models", nargs="+", default=["default", "vgg16"])
    parser.add_argument("--repeats", type=int, default=2, help="measured passes (default model)")
    parser.add_argument("--vgg16-repeats", type=int, default=1, help="measured passes (VGG-16)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    return parser


def test_image(height: int, width: int) -> np.ndarray:
    """A smooth random RGB image (blobs and edges rather than pixel noise)."""
    rng = np.random.default_rng(0)
    noise = rng.random((height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    image = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return (image.clip(0, 1) * 255).astype(np.uint8)


def configurations(config_path: str, names: list[str]) -> dict[str, tuple[dict, dict]]:
    """name → (model section, infer section) at the paper's six scales."""
    config = load_config(config_path)
    default_model = {**config["model"], "pretrained": False}
    infer = {**config["infer"], "scales": PAPER_SCALES, "max_size": 1500}
    chosen = {
        "default": (default_model, infer),
        "vgg16": (
            {**default_model, "backbone": "vgg16", "head_channels": 512, "k": 5},
            {**infer, "pre_nms_topk": 1000},
        ),
    }
    return {name: chosen[name] for name in names}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def instrumented_pass(model, image, infer_cfg, device) -> dict[str, float]:
    """Seconds per step for one image over all scales, the steps of `infer_image` in turn."""
    times = dict.fromkeys(("preprocess", "backbone", "instance_branch", "objectness_branch",
                           "rank"), 0.0)  # fmt: skip
    m = model.m
    for short_side in infer_cfg["scales"]:
        t0 = time.perf_counter()
        resized, scale = resize_image(image, short_side, infer_cfg["max_size"])
        tensor = image_tensor(resized, device)
        _sync(device)
        t1 = time.perf_counter()
        features = model.backbone(tensor)
        _sync(device)
        t2 = time.perf_counter()
        scores = model.instance_branch(features)
        _sync(device)
        t3 = time.perf_counter()
        objectness = model.objectness_branch(features)
        _sync(device)
        t4 = time.perf_counter()
        tops, logits = rank_windows(objectness[0, 0], m, infer_cfg["pre_nms_topk"])
        scores.half().cpu(), tops.cpu(), logits.cpu()  # what inference keeps of a scale
        _sync(device)
        t5 = time.perf_counter()
        times["preprocess"] += t1 - t0
        times["backbone"] += t2 - t1
        times["instance_branch"] += t3 - t2
        times["objectness_branch"] += t4 - t3
        times["rank"] += t5 - t4
    return times


def end_to_end_pass(model, image, infer_cfg, device, folder: Path) -> tuple[dict, dict]:
    """Seconds of infer_image, candidate writing, nms_image and proposal writing; counts."""
    height, width = image.shape[:2]
    t0 = time.perf_counter()
    found = infer_image(model, image, infer_cfg["scales"], model.m, model.k,
                        infer_cfg["max_size"], infer_cfg["pre_nms_topk"], device)  # fmt: skip
    t1 = time.perf_counter()
    attrs = {"config": "{}", "checkpoint_sha256": "0" * 64, "dataset": "bench",
             "scales": infer_cfg["scales"], "k": model.k, "m": model.m, "head": "instancefcn",
             "shard": "0/1"}  # fmt: skip
    record = ImageCandidates(1, "bench.png", height, width, **found)
    with CandidateWriter(folder / "candidates.h5", attrs) as writer:
        writer.add(record)
    t2 = time.perf_counter()
    with Candidates(folder / "candidates.h5") as reader, torch_threads(1):  # as `ifcn nms` runs
        result = nms_image(reader.read(0), defaults("nms"))
    t3 = time.perf_counter()
    with ProposalWriter(folder / "proposals.h5", attrs) as writer:
        writer.add(**result)
    t4 = time.perf_counter()
    times = {"infer_image": t1 - t0, "write_candidates": t2 - t1, "nms_image": t3 - t2,
             "write_proposals": t4 - t3}  # fmt: skip
    counts = {"candidates": len(record), "proposals": len(result["rles"]),
              "candidate_bytes": (folder / "candidates.h5").stat().st_size}  # fmt: skip
    return times, counts


def measure(name, model_cfg, infer_cfg, image, repeats, device) -> dict:
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        end_to_end_pass(model, image, infer_cfg, device, folder)  # warm-up: kernels, allocator
        steps, totals = [], []
        for _ in range(repeats):
            steps.append(instrumented_pass(model, image, infer_cfg, device))
            times, counts = end_to_end_pass(model, image, infer_cfg, device, folder)
            totals.append(times)
    median = {key: statistics.median(s[key] for s in steps) for key in steps[0]}
    median |= {key: statistics.median(t[key] for t in totals) for key in totals[0]}
    forward = median["backbone"] + median["instance_branch"] + median["objectness_branch"]
    after = median["write_candidates"] + median["nms_image"] + median["write_proposals"]
    pipeline = median["infer_image"] + after
    breakdown = forward + median["preprocess"] + median["rank"] + after
    return {
        "model": {key: model_cfg[key] for key in ("backbone", "head", "k", "m", "head_channels")},
        "scales": infer_cfg["scales"],
        "max_size": infer_cfg["max_size"],
        "pre_nms_topk": infer_cfg["pre_nms_topk"],
        "repeats": repeats,
        **counts,
        "seconds": median,
        "network_forward_s": forward,
        "everything_else_s": breakdown - forward,  # measured step by step, never negative
        "pipeline_s": pipeline,
        "ratio_pipeline_to_forward": pipeline / forward,
        "ratio_from_breakdown": breakdown / forward,
        "target_ratio": 1.15 if name == "vgg16" else None,
    }


def data_share(model, infer_cfg, image, device, folder: Path, count: int = 8) -> dict:
    """Seconds of `run_inference` over `count` JPEGs and the share spent waiting for images,
    decoding in the loop (0 workers) and in 2 DataLoader workers."""
    root = folder / "images"
    root.mkdir(exist_ok=True)
    table = {}
    for i in range(count):
        name = f"{i:03d}.jpg"
        cv2.imwrite(str(root / name), np.roll(image, 7 * i, axis=1)[:, :, ::-1].copy())
        table[i + 1] = {"file_name": name, "height": image.shape[0], "width": image.shape[1]}
    attrs = {"config": "{}", "checkpoint_sha256": "0" * 64, "dataset": "bench",
             "scales": infer_cfg["scales"], "k": model.k, "m": model.m, "head": "instancefcn",
             "shard": "0/1"}  # fmt: skip
    out = {}
    for workers in (0, 2):
        settings = {**infer_cfg, "workers": workers}
        run_inference(model, table, root, folder / "c.h5", attrs, settings, device,
                      show_progress=False)  # warm-up  # fmt: skip
        run = run_inference(model, table, root, folder / "c.h5", attrs, settings, device,
                            show_progress=False)  # fmt: skip
        out[f"workers_{workers}"] = {"seconds_per_image": run.seconds / count,
                                     "data_share": run.data_seconds / run.seconds}  # fmt: skip
    return out


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image = test_image(args.height, args.width)
    results = {
        "image": [args.height, args.width],
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "configurations": {},
    }
    for name, (model_cfg, infer_cfg) in configurations(args.config, args.models).items():
        repeats = args.vgg16_repeats if name == "vgg16" else args.repeats
        result = measure(name, copy.deepcopy(model_cfg), infer_cfg, image, repeats, device)
        if name == "default":
            torch.manual_seed(0)
            model = build_model(copy.deepcopy(model_cfg)).to(device).eval()
            with tempfile.TemporaryDirectory() as tmp:
                result["data_loading"] = data_share(model, infer_cfg, image, device, Path(tmp))
            shares = ", ".join(f"{key} {value['data_share']:.0%}"
                               for key, value in result["data_loading"].items())  # fmt: skip
            print(f"{name}: share of `ifcn infer` waiting for decoded images: {shares}")
        results["configurations"][name] = result
        s = result["seconds"]
        print(
            f"{name}: forward {result['network_forward_s']:.2f} s (backbone {s['backbone']:.2f}, "
            f"instance {s['instance_branch']:.3f}, objectness {s['objectness_branch']:.3f}); "
            f"preprocess {s['preprocess']:.3f}, rank {s['rank']:.3f}, "
            f"infer_image {s['infer_image']:.2f}, write {s['write_candidates']:.3f}, "
            f"nms {s['nms_image']:.3f} ({result['candidates']} candidates, "
            f"{result['candidate_bytes'] / 1e6:.2f} MB -> "
            f"{result['proposals']} proposals), write {s['write_proposals']:.3f}; "
            f"ratio {result['ratio_pipeline_to_forward']:.3f} end to end, "
            f"{result['ratio_from_breakdown']:.3f} from the breakdown"
            + (f" (target <= {result['target_ratio']})" if result["target_ratio"] else "")
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():  # keep the configurations not measured this time (e.g. a slow VGG-16 run)
        previous = json.loads(out.read_text())
        if {key: previous.get(key) for key in ("image", "device")} == {
            key: results[key] for key in ("image", "device")
        }:
            results["configurations"] = previous["configurations"] | results["configurations"]
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
