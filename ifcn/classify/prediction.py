"""Label proposals, giving instance segmentation (DESIGN §9).

Per image: one forward pass of the backbone at `classify.test_scale`, the best `top_n`
proposals classified, then for each class the proposals scoring at least `score_threshold`
go through greedy mask NMS (pycocotools mask IoU above `nms_iou` suppresses the lower score),
and the best `detections_per_image` over all classes are kept. The output is a COCO segm
results JSON: `image_id`, `category_id`, `segmentation` (compressed RLE, counts as str) and
`score`, with no `bbox` key (`COCO.loadRes` would then take the box path and overwrite each
result's area with its box's). The prediction settings (`ifcn.config.prediction_keys`) come
from the run's config, the classifier and its image sizes from its checkpoint. Images are
decoded and resized, and the proposals' masks resized to the RoI grids, in DataLoader workers
(classify.workers; pinned memory on CUDA), so the network does not wait for them.

The command `ifcn classify predict` is `ifcn.commands.classify_predict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset

from ifcn.classify.model import KIND, ProposalClassifier, build_classifier, roi_inputs
from ifcn.config import prediction_keys
from ifcn.data.image import image_tensor, load_image, resize_image
from ifcn.data.instances import read_image_table
from ifcn.data.jsonio import load_json, write_json_atomic
from ifcn.errors import IfcnError
from ifcn.progress import progress_bar
from ifcn.proposals.format import Proposals, ProposalsPerProcess, check_image_sets
from ifcn.signals import dataloader_worker
from ifcn.training import checkpoint


def mask_nms(rles: list[dict], scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS on mask IoU, best first (ties keep the earlier index)."""
    if not rles:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    ranked = [rles[i] for i in order]
    overlaps = np.asarray(mask_utils.iou(ranked, ranked, [0] * len(ranked)))
    overlaps = overlaps.reshape(len(ranked), len(ranked))
    suppressed = np.zeros(len(ranked), bool)
    keep = []
    for i in range(len(ranked)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou
    return order[keep]


def select_detections(
    probs: np.ndarray,
    rles: list[dict],
    score_threshold: float,
    nms_iou: float,
    max_dets: int,
) -> list[tuple[int, int, float]]:
    """(proposal index, class 1..C, score) of the kept detections, best first.

    `probs` [n, C+1] are softmax outputs; each class is suppressed on its own.
    """
    found = []
    for c in range(1, probs.shape[1]):
        candidates = np.flatnonzero(probs[:, c] >= score_threshold)
        scores = probs[candidates, c]
        kept = mask_nms([rles[i] for i in candidates], scores, nms_iou)
        found += [(int(candidates[k]), c, float(scores[k])) for k in kept]
    found.sort(key=lambda d: -d[2])
    return found[:max_dets]


def load_classifier(path: str | Path, device: torch.device) -> tuple[ProposalClassifier, dict]:
    """The trained classifier and its checkpoint (config, categories)."""
    state = checkpoint.load(path, kind=KIND)
    model = build_classifier(
        state["config"], len(state["categories"]), pretrained=False, imagenet_fc=False
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise IfcnError(f"weights do not fit the checkpoint's config ({first})", path) from None
    return model.to(device).eval(), state


def check_categories(categories: list[dict], json_path: str | Path, checkpoint_path) -> None:
    """An images JSON that lists categories must know every class the classifier predicts."""
    data = load_json(json_path)
    listed = data.get("categories") if isinstance(data, dict) else None
    if not listed:
        return
    try:
        known = {int(c["id"]) for c in listed}
    except (KeyError, TypeError, ValueError):
        raise IfcnError("a category lacks an integer id", json_path) from None
    unknown = [c["id"] for c in categories if c["id"] not in known]
    if unknown:
        raise IfcnError(
            f"the classifier {checkpoint_path} predicts category_id {unknown[0]}, "
            "which this JSON's categories lack",
            json_path,
        )


class PredictionInputs(Dataset):
    """What the network reads for image i of the sorted ids: the resized, normalised image,
    its best `top_n` proposals as RoIs and mask grids, and their RLEs.

    Runs in DataLoader workers; the proposal file is opened once per process (h5py handles do
    not survive a fork). Bad input comes back as an ``error`` entry, raised by the caller as
    one line (an exception in a worker would reach it as a traceback).
    """

    def __init__(
        self,
        table: Mapping[int, dict],
        root: Path,
        proposals_path: Path,
        images_json: Path,
        cfg: Mapping,
        grid_size: int,
    ) -> None:
        self.ids = sorted(table)
        self.table, self.root = table, root
        self.images_json = images_json
        self.cfg, self.grid_size = cfg, grid_size
        self._file = ProposalsPerProcess(proposals_path)

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        """Close this process's handle of the proposal file."""
        self._file.close()

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        entry = self.table[image_id]
        path = self.root / entry["file_name"]
        try:
            image = load_image(path)
        except IfcnError as exc:
            return {"image_id": image_id, "error": exc}
        if image.shape[:2] != (entry["height"], entry["width"]):
            message = (
                f"decoded size {image.shape[0]}x{image.shape[1]} differs from "
                f"{entry['height']}x{entry['width']} in {self.images_json}"
            )
            return {"image_id": image_id, "error": IfcnError(message, path)}
        found = self._file.get(image_id, top_n=int(self.cfg["top_n"]))
        rles = found.coco_rles()
        resized, scale = resize_image(image, int(self.cfg["test_scale"]), self.cfg["max_size"])
        rois, grids = roi_inputs(rles, found.boxes, scale, resized.shape[1], False, self.grid_size)
        return {
            "image_id": image_id,
            "image": image_tensor(resized)[0],
            "rois": rois,
            "grids": grids,
            "rles": rles,
            "counts": [counts.decode("ascii") for counts in found.rles],
        }


def run_prediction(
    model: ProposalClassifier,
    state: dict,
    checkpoint_path: str | Path,
    proposals_path: str | Path,
    images_json: str | Path,
    out: str | Path,
    config: Mapping,
    image_root: str | Path | None = None,
    show_progress: bool = True,
) -> int:
    """Write the COCO segm results of the images' proposals to `out`; return their number.

    ``model`` and ``state`` are `load_classifier`'s; the prediction settings and the default
    image folder (``data.val_images``) are the run's ``config``'s.
    """
    device = next(model.parameters()).device
    predicting = {key: config["classify"][key] for key in prediction_keys()}
    cfg = {**state["config"]["classify"], **predicting}
    categories = state["categories"]
    table = read_image_table(images_json)
    check_categories(categories, images_json, checkpoint_path)
    root = Path(image_root or config["data"]["val_images"])
    with Proposals(proposals_path) as proposals:
        check_image_sets(proposals, table, images_json)
    inputs = PredictionInputs(
        table, root, Path(proposals_path), Path(images_json), cfg, model.grid_size
    )
    loader = DataLoader(
        inputs,
        batch_size=None,
        num_workers=int(cfg["workers"]),
        pin_memory=device.type == "cuda",
        worker_init_fn=dataloader_worker,
    )
    results = []
    try:
        for sample in progress_bar(loader, desc="classify", disable=not show_progress):
            if "error" in sample:
                raise sample["error"]
            if not sample["rles"]:
                continue
            with torch.no_grad():
                logits = model(
                    sample["image"][None].to(device, non_blocking=True),
                    sample["rois"].to(device, non_blocking=True),
                    sample["grids"].to(device, non_blocking=True),
                )
            probs = torch.softmax(logits.float(), 1).cpu().numpy()
            kept = select_detections(
                probs,
                sample["rles"],
                float(cfg["score_threshold"]),
                float(cfg["nms_iou"]),
                int(cfg["detections_per_image"]),
            )
            image_id = sample["image_id"]
            entry = table[image_id]
            size = [entry["height"], entry["width"]]
            results += [
                {
                    "image_id": image_id,
                    "category_id": categories[c - 1]["id"],
                    "segmentation": {"size": size, "counts": sample["counts"][i]},
                    "score": round(score, 6),
                }
                for i, c, score in kept
            ]
    finally:
        inputs.close()
    write_json_atomic(results, out)
    return len(results)
