"""Non-maximum suppression of one image's candidate windows (paper §3.3 "Inference", DESIGN §6).

Each candidate's mask is resized to its window box in original-image pixels and binarised
(`ifcn.proposals.resample`); empty masks are dropped, NMS runs on the tight boxes of the
binary masks ordered by objectness, and the best N are kept, encoded as COCO RLE at image
resolution. The proposal score is sigmoid(objectness). `ifcn nms` runs this for every image
of a candidates file, in a pool of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms as box_nms

from ifcn.cpus import available_cpus
from ifcn.pool import Pool
from ifcn.progress import progress_bar
from ifcn.proposals.candidates import Candidates, ImageCandidates
from ifcn.proposals.format import ProposalWriter
from ifcn.proposals.resample import render, tight_boxes
from ifcn.signals import worker_process


def nms_image(record: ImageCandidates, settings: Mapping) -> dict:
    """One image's proposals from its candidates under ``settings`` (the config's ``nms``
    section: iou, top_n, mask_threshold): arguments of `ProposalWriter.add`."""
    iou, top_n = float(settings["iou"]), int(settings["top_n"])
    threshold = float(settings["mask_threshold"])
    height, width = int(record.height), int(record.width)
    logits = np.asarray(record.objectness, np.float32)
    finite = np.flatnonzero(np.isfinite(logits))
    masks = np.asarray(record.masks)[finite]
    boxes = np.asarray(record.boxes, np.float32)[finite].astype(np.float64)
    logits = logits[finite]
    tight = tight_boxes(masks, boxes, height, width, threshold)
    nonempty = np.flatnonzero((tight[:, 2] > tight[:, 0]) & (tight[:, 3] > tight[:, 1]))
    order = box_nms(torch.from_numpy(tight[nonempty]), torch.from_numpy(logits[nonempty]), iou)
    keep = nonempty[order[:top_n].numpy()]
    rles, final = render(masks[keep], boxes[keep], height, width, threshold)
    drawn = (final[:, 2] > final[:, 0]) & (final[:, 3] > final[:, 1])
    keep = keep[drawn]
    return {
        "image_id": int(record.image_id),
        "file_name": str(record.file_name),
        "height": height,
        "width": width,
        "scores": torch.sigmoid(torch.from_numpy(logits[keep])).numpy().astype(np.float32),
        "boxes": final[drawn],
        "rles": [counts for counts, on in zip(rles, drawn, strict=True) if on],
        "scales": np.asarray(record.scale)[finite][keep].astype(np.int8),
    }


_worker: dict = {}


def _init_worker(path: str, settings: dict) -> None:
    worker_process()
    torch.set_num_threads(1)
    _worker["reader"] = Candidates(path)
    _worker["settings"] = settings


def _work(index: int) -> dict:
    return nms_image(_worker["reader"].read(index), _worker["settings"])


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch with `count` threads inside the block (NMS parallelises over processes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def image_results(
    candidates: str | Path, count: int, settings: Mapping, workers: int
) -> Iterator[Iterator[dict]]:
    """Every image's `nms_image` result in file order, from a pool of processes or this one."""
    settings = dict(settings)
    if workers > 1:
        with Pool(workers, _init_worker, (str(candidates), settings)) as pool:
            yield pool.imap(_work, range(count), chunksize=2)
    else:
        with Candidates(candidates) as reader:
            yield (nms_image(reader.read(n), settings) for n in range(count))


def run_nms(
    candidates: str | Path,
    out: str | Path,
    settings: Mapping,
    workers: int,
    show_progress: bool = True,
) -> int:
    """Write proposals.h5 from candidates.h5 under ``settings`` (the config's ``nms`` section)
    with `workers` processes (0: one per CPU); returns the number of images. Images without
    proposals, or none at all, are fine."""
    with Candidates(candidates) as reader:
        attrs, count = reader.attrs, len(reader)
    proposal_attrs = {
        "config": attrs["config"],
        "checkpoint_sha256": attrs["checkpoint_sha256"],
        "dataset": attrs["dataset"],
        "dataset_sha256": attrs.get("dataset_sha256", ""),
        "scales": attrs["scales"],
        "k": attrs["k"],
        "m": attrs["m"],
        "head": attrs.get("head", "instancefcn"),
        "nms_iou": float(settings["iou"]),
        "top_n": int(settings["top_n"]),
        "mask_threshold": float(settings["mask_threshold"]),
    }
    workers = max(1, min(int(workers) or available_cpus(), count))
    with (
        torch_threads(1),
        image_results(candidates, count, settings, workers) as results,
        progress_bar(total=count, desc="nms", unit="image", disable=not show_progress) as progress,
        ProposalWriter(out, proposal_attrs) as writer,
    ):
        for result in results:
            writer.add(**result)
            progress.update(1)
    return count
