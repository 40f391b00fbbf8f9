"""One image in, its candidate windows out: the network at every scale, and the ranking.

At every scale (shorter side) the network runs once. Objectness does not depend on the mask, so
the windows are ranked first and only the top ``pre_nms_topk`` of each scale are kept. For the
InstanceFCN head a kept window's mask is a copy of the scale's k² score maps, so the maps are
kept instead (as float16 logits; `ifcn.proposals.candidates` assembles the windows, which equals
dense assembling followed by the same selection, tested); the ~DeepMask head's masks are
computed here. Images are decoded, resized and normalised by `ScaledImages`, in DataLoader
workers, so the network never waits on JPEG decoding. ``infer_image`` takes any module with the
model's forward contract (``images [B, 3, H, W] → {"scores": [B, k², h, w], "objectness":
[B, 1, h, w], ...}``), so tests plug in hand-made score maps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ifcn.assemble import assemble_sparse
from ifcn.data.image import image_tensor, load_image, resize_image
from ifcn.errors import IfcnError
from ifcn.progress import progress_bar
from ifcn.proposals.candidates import CandidateWriter, ImageCandidates
from ifcn.signals import dataloader_worker
from ifcn.windows import rank_windows


def mask_size(model: nn.Module, m: int) -> int:
    """Side of the stored masks: m for the assembled instances, the ~DeepMask head's own side."""
    head = getattr(model, "mask_head", None)
    return int(head.mask_size) if head is not None else int(m)


def window_masks(model: nn.Module, out: dict[str, Tensor], tops: Tensor, m: int, k: int | None):
    """Mask probabilities [n, S, S] of the windows with top-left cells `tops` (one image)."""
    if "scores" in out:
        scores = out["scores"][0]
        if k is not None and scores.shape[0] != k * k:
            raise ValueError(f"the model gives {scores.shape[0]} score maps, expected k²={k * k}")
        return assemble_sparse(scores, tops, m, fill=float("-inf")).sigmoid()
    batch_index = torch.zeros(len(tops), dtype=torch.long, device=tops.device)
    return model.mask_head.forward_windows(out["features"], batch_index, tops).sigmoid()


def scaled_inputs(
    image: np.ndarray, scales: Sequence[int], max_size: int | None = None
) -> list[tuple[Tensor, float]]:
    """The network's input [3, H, W] at every scale of an RGB uint8 image, and the resize factor
    (resized / original) of each."""
    out = []
    for short_side in scales:
        resized, factor = resize_image(image, int(short_side), max_size)
        out.append((image_tensor(resized)[0], float(factor)))
    return out


@torch.inference_mode()
def infer_scaled(
    model: nn.Module,
    inputs: Sequence[tuple[Tensor, float]],
    m: int,
    k: int | None,
    pre_nms_topk: int,
    device: torch.device | str = "cpu",
) -> dict:
    """Candidates of one image from its `scaled_inputs`, best window first within each scale:
    the fields of `ImageCandidates` but the image's own (tops, objectness, scale, resize,
    map_sizes, m, and maps or stored_masks)."""
    tops_all, logits_all, scale, sizes, maps, masks = [], [], [], [], [], []
    for index, (tensor, _) in enumerate(inputs):
        out = model(tensor[None].to(device, non_blocking=True))
        objectness = out["objectness"][0, 0]
        tops, logits = rank_windows(objectness, m, pre_nms_topk)
        if "scores" in out:
            if k is not None and out["scores"].shape[1] != k * k:
                raise ValueError(
                    f"the model gives {out['scores'].shape[1]} score maps, expected k²={k * k}"
                )
            maps.append(out["scores"][0].half().cpu().numpy())
        else:
            masks.append(window_masks(model, out, tops, m, k).half().cpu())
        tops_all.append(tops.cpu())
        logits_all.append(logits.float().cpu())
        scale.append(np.full(len(tops), index, np.int8))
        sizes.append(tuple(objectness.shape))
    found = {
        "tops": torch.cat(tops_all).numpy().astype(np.int64),
        "objectness": torch.cat(logits_all).numpy(),
        "scale": np.concatenate(scale),
        "resize": np.array([factor for _, factor in inputs], dtype=np.float64),
        "map_sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
        "m": int(m),
    }
    if maps:
        found["maps"] = maps
    else:
        found["stored_masks"] = torch.cat(masks).numpy()
    return found


def infer_image(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[int],
    m: int,
    k: int | None,
    max_size: int | None,
    pre_nms_topk: int,
    device: torch.device | str = "cpu",
) -> dict:
    """Candidates of one RGB uint8 image over all scales (`infer_scaled` of its inputs)."""
    inputs = scaled_inputs(image, scales, max_size)
    return infer_scaled(model, inputs, m, k, pre_nms_topk, device)


class ScaledImages(Dataset):
    """Images decoded, checked against their listed size and turned into `scaled_inputs`.

    Item i is (i, inputs, None), or (i, None, message) for an image that cannot be used: an
    exception raised in a DataLoader worker would reach the caller as a multi-line traceback,
    so the caller raises the one-line message itself.
    """

    def __init__(
        self,
        entries: Sequence[tuple[Path, int, int]],
        scales: Sequence[int],
        max_size: int | None,
    ):
        self.entries, self.scales, self.max_size = list(entries), list(scales), max_size

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[int, list | None, str | None]:
        path, height, width = self.entries[index]
        try:
            image = load_image(path)
            if image.shape[:2] != (height, width):
                raise IfcnError(
                    f"decoded size {image.shape[0]}x{image.shape[1]} differs from the listed "
                    f"{height}x{width}",
                    path,
                )
            return index, scaled_inputs(image, self.scales, self.max_size), None
        except IfcnError as exc:
            return index, None, str(exc)


def single(batch: list) -> object:
    """DataLoader collate for batches of one item: the item itself."""
    return batch[0]


@dataclass
class InferenceRun:
    """What `run_inference` did: images, seconds in all, and seconds spent waiting for data."""

    images: int
    seconds: float
    data_seconds: float


def run_inference(
    model: nn.Module,
    images: dict[int, dict],
    image_root: str | Path,
    out: str | Path,
    attrs: dict,
    infer_cfg: Mapping,
    device: torch.device | str,
    show_progress: bool = True,
) -> InferenceRun:
    """Write the candidates of `images` (id → entry) to `out` under ``infer_cfg`` (the config's
    ``infer`` section).

    Its `workers` DataLoader processes decode and resize the images (0: this process); on CUDA
    the inputs come in pinned memory and are copied while the previous image runs.
    """
    device = torch.device(device)
    image_root = Path(image_root)
    ids = sorted(images)
    entries = [
        (image_root / images[i]["file_name"], int(images[i]["height"]), int(images[i]["width"]))
        for i in ids
    ]
    for path, _, _ in entries:
        if not path.is_file():
            raise IfcnError("image file not found (listed in the image table)", path)
    m, k = int(model.m), int(model.k)
    loader = DataLoader(
        ScaledImages(entries, infer_cfg["scales"], infer_cfg["max_size"]),
        batch_size=1,
        shuffle=False,
        num_workers=int(infer_cfg["workers"]),
        collate_fn=single,
        pin_memory=device.type == "cuda",
        worker_init_fn=dataloader_worker,
    )
    waited, start = 0.0, time.perf_counter()
    with CandidateWriter(out, {**attrs, "mask_size": mask_size(model, m)}) as writer:
        batches = iter(loader)
        for _ in progress_bar(range(len(ids)), desc="infer", disable=not show_progress):
            before = time.perf_counter()
            index, inputs, error = next(batches)
            waited += time.perf_counter() - before
            if error is not None:
                raise IfcnError(error)
            found = infer_scaled(model, inputs, m, k, infer_cfg["pre_nms_topk"], device)
            entry = images[ids[index]]
            writer.add(
                ImageCandidates(
                    image_id=ids[index],
                    file_name=entry["file_name"],
                    height=int(entry["height"]),
                    width=int(entry["width"]),
                    **found,
                )
            )
    return InferenceRun(len(ids), time.perf_counter() - start, waited)
