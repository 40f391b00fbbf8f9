"""The second step of the paper's two-step training (Table 4, DESIGN §9).

The classifier learns on given proposals (proposals.h5 of the training images) and the GT
masks. Its backbone is either built from the config's `model` section or, with `--init-from`,
copied from the proposal model's checkpoint. One image per process per step, 64 RoIs at 1:3,
softmax cross-entropy; SGD with momentum and a step schedule as `ifcn train`. Checkpoints are
atomic; `--resume` continues exactly: image, scale, flip and RoI sampling of step i depend only
on (classify.seed, i, rank).

The command `ifcn classify train` is `ifcn.commands.classify_train`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifcn.classify.model import KIND, build_classifier, proposal_backbone, set_backbone
from ifcn.classify.targets import RoiSamples, category_table
from ifcn.config import retrain_neutral
from ifcn.data.dataset import CocoInstances
from ifcn.errors import IfcnError
from ifcn.proposals.format import Proposals, check_image_sets
from ifcn.training import checkpoint, distributed, engine
from ifcn.training.hooks import lr_scheduler
from ifcn.training.log import LogFormat
from ifcn.training.run_folder import output_folder, start_run

# classify_log.csv: the softmax loss, how many sampled RoIs it gets right, and their mix
LOG = LogFormat(
    name="classify_log.csv",
    columns=("iteration", "loss", "accuracy", "num_fg", "num_bg", "lr", "seconds"),
    desc="classify train",
    postfix={"loss": "loss", "acc": "accuracy"},
)
# classify keys that change neither the weights nor the data order (those of prediction among
# them): a run may resume under new values of these.
RESUME_NEUTRAL = retrain_neutral("classify")


def classification_loss(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Softmax cross-entropy over the sampled RoIs (zero, with a graph, when there are none)."""
    if not len(labels):
        zero = logits.sum() * 0.0
        return {"loss": zero, "accuracy": zero.detach(), "num_fg": zero.detach()}
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(1) == labels).float().mean()
    return {"loss": loss, "accuracy": accuracy, "num_fg": (labels > 0).sum().float()}


def check_resumable(
    state: dict, config: dict, categories: list[dict], path: Path, auto: bool = False
) -> None:
    """Refuse a checkpoint of another classifier (backbone, head sizes, categories; its kind is
    checked where it is loaded) and, for `--resume auto`, one written under other training
    settings (a config edited between two runs of the workflow); the message names what
    differs."""
    saved = state["config"]
    architecture = [
        ("model", "backbone"),
        ("classify", "pool_size"),
        ("classify", "fc_dim"),
        ("classify", "roi_norm"),
    ]
    for section, key in architecture:
        theirs, ours = saved.get(section, {}).get(key), config[section].get(key)
        if theirs != ours:
            raise IfcnError(
                f"checkpoint has {section}.{key}={theirs!r}, the config asks for {ours!r}", path
            )
    if state.get("categories") != categories:
        raise IfcnError("checkpoint was trained on other categories than the GT's", path)
    if not auto:
        return
    difference = checkpoint.training_difference(
        saved, config, sections=("classify",), neutral=RESUME_NEUTRAL
    )
    if difference is not None:
        raise checkpoint.other_settings_error(difference, path)


def _classifier_losses(
    model: nn.Module, sample: dict, iteration: int, *, device: torch.device
) -> dict[str, Tensor]:
    """Softmax loss of one image's sampled RoIs (their sampling is part of the sample)."""
    image = sample["image"][None].to(device, non_blocking=True)
    logits = model(image, sample["rois"].to(device), sample["grids"].to(device))
    labels = sample["labels"].to(device)
    losses = classification_loss(logits, labels)
    losses["num_bg"] = (labels == 0).sum().float()
    return losses


def run_training(
    config: dict,
    proposals_path: str | Path,
    gt_path: str | Path,
    out_dir: str | Path,
    image_root: str | Path | None = None,
    init_from: str | Path | None = None,
    resume: str | None = None,
    device_name: str = "auto",
    show_progress: bool = True,
) -> Path:
    """Train the classifier; return the path of model_final.pt. IfcnError on bad input."""
    out_dir = output_folder(out_dir)
    cfg = config["classify"]
    info, device = distributed.init_distributed_mode(device_name)
    images = CocoInstances(
        gt_path,
        image_root or config["data"]["train_images"],
        scales=cfg["scales"],
        max_size=cfg["max_size"],
        flip=cfg["flip"],
        reader="ifcn classify train",
    )
    categories = category_table(images)
    with Proposals(proposals_path) as proposals:
        check_image_sets(proposals, images.image_table(), gt_path)
    distributed.run_on_main(images.verify_images, device)
    backbone = proposal_backbone(init_from, config) if init_from is not None else None

    with start_run(
        out_dir, resume, info, device,
        kind=KIND, iters=cfg["iters"], show_progress=show_progress,
        check=lambda state, path, auto: check_resumable(state, config, categories, path, auto),
    ) as run:  # fmt: skip
        torch.manual_seed(cfg["seed"])
        from_checkpoint = init_from is not None or run.resume is not None
        model = build_classifier(
            config, len(categories), pretrained=False if from_checkpoint else None
        )
        if backbone is not None and run.resume is None:
            set_backbone(model, backbone, init_from)
        model.to(device)
        optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg["lr"],
            momentum=cfg["momentum"],
            weight_decay=cfg["weight_decay"],
        )
        samples = RoiSamples(images, proposals_path, categories, cfg)
        try:
            return engine.fit(
                model,
                functools.partial(_classifier_losses, device=device),
                optimizer,
                lr_scheduler(optimizer, cfg),
                samples,
                cfg,
                run,
                log=LOG,
                extras={"kind": KIND, "config": config, "categories": categories},
            )
        finally:
            samples.close()
