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

from ifcn.classify.model import KIND, build_classifier, load_backbone_from
from ifcn.classify.targets import RoiSamples, category_table, check_image_sets
from ifcn.config import retrain_neutral
from ifcn.data.coco import CocoInstances
from ifcn.errors import IfcnError
from ifcn.proposals.format import Proposals
from ifcn.training import checkpoint, distributed, engine
from ifcn.training.engine import build_lr_lambda

LOG_COLUMNS = ["iteration", "loss", "accuracy", "num_fg", "num_bg", "lr", "seconds"]
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
    out_dir = engine.output_folder(out_dir)
    cfg = config["classify"]
    info, device = distributed.init_distributed_mode(device_name)
    images = CocoInstances(
        gt_path,
        image_root or config["data"]["train_images"],
        scales=cfg["scales"],
        max_size=cfg["max_size"],
        flip=cfg["flip"],
    )
    categories = category_table(images)
    with Proposals(proposals_path) as proposals:
        check_image_sets(proposals, images.coco.imgs, gt_path)

    def check() -> None:
        images.verify_images()
        checkpoint.remove_temporaries(out_dir)

    distributed.run_on_main(check, device)
    resume_from = engine.resolve_resume(
        resume,
        out_dir,
        info,
        device,
        kind=KIND,
        check=lambda state, path, auto: check_resumable(state, config, categories, path, auto),
    )

    torch.manual_seed(cfg["seed"])
    from_checkpoint = init_from is not None or resume_from is not None
    model = build_classifier(config, len(categories), pretrained=False if from_checkpoint else None)
    if init_from is not None and resume_from is None:
        load_backbone_from(model, str(init_from), config)
    model.to(device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(cfg))
    samples = RoiSamples(images, proposals_path, categories, cfg)
    try:
        return engine.fit(
            model,
            functools.partial(_classifier_losses, device=device),
            optimizer,
            scheduler,
            samples,
            cfg,
            out_dir,
            info,
            device,
            resume=resume_from,
            extras={"kind": KIND, "config": config, "categories": categories},
            log_name="classify_log.csv",
            log_columns=LOG_COLUMNS,
            postfix={"loss": "loss", "acc": "accuracy"},
            desc="classify train",
            show_progress=show_progress,
        )
    finally:
        samples.close()
