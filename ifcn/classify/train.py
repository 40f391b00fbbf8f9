"""`ifcn classify train`: the second step of the paper's two-step training (Table 4, DESIGN §9).

The classifier learns on given proposals (proposals.h5 of the training images) and the GT
masks. Its backbone is either built from the config's `model` section or, with `--init-from`,
copied from the proposal model's checkpoint. One image per process per step, 64 RoIs at 1:3,
softmax cross-entropy; SGD with momentum and a step schedule as `ifcn train`. Checkpoints are
atomic; `--resume` continues exactly: image, scale, flip and RoI sampling of step i depend only
on (classify.seed, i, rank).
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ifcn import checkpoint, distributed
from ifcn.classify.model import KIND, build_classifier, load_backbone_from
from ifcn.classify.targets import RoiSamples, category_table, check_image_sets
from ifcn.config import load_config
from ifcn.data.coco import CocoInstances
from ifcn.engine import (
    IterationSampler,
    StopRequest,
    TrainLog,
    build_lr_lambda,
    ignore_sigterm,
)
from ifcn.errors import IfcnError
from ifcn.proposals.format import Proposals

LOG_COLUMNS = ["iteration", "loss", "accuracy", "num_fg", "num_bg", "lr", "seconds"]
# classify keys that change neither the weights nor the data order, or only matter at prediction:
# a run may resume under new values of these.
RESUME_NEUTRAL = (
    "workers",
    "log_period",
    "checkpoint_period",
    "keep_checkpoints",
    "test_scale",
    "score_threshold",
    "nms_iou",
    "detections_per_image",
)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "ifcn classify train", description=__doc__, add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--proposals", required=True, help="proposals.h5 of the training images")
    parser.add_argument("--gt", required=True, help="COCO instances JSON of the training images")
    parser.add_argument("--images", help="folder of the images (default: data.train_images)")
    parser.add_argument(
        "--init-from", help="model_final.pt of `ifcn train`: start from its backbone weights"
    )
    parser.add_argument("--out", required=True, help="output folder of the classifier run")
    parser.add_argument("--iters", type=int, help="override classify.iters")
    parser.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--workers", type=int, help="override classify.workers")
    return parser


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
    """Refuse a checkpoint of another classifier (kind, backbone, head sizes, categories) and,
    for `--resume auto`, one written under other training settings (a config edited between
    two runs of the workflow); the message names what differs."""
    if state.get("kind") != KIND:
        raise IfcnError("not a classifier checkpoint (written by `ifcn classify train`)", path)
    saved = state["config"]
    architecture = [("model", "backbone"), ("classify", "pool_size"), ("classify", "fc_dim")]
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
    keys = sorted(set(saved.get("classify", {})) | set(config["classify"]))
    for key in keys:
        theirs, ours = saved.get("classify", {}).get(key), config["classify"].get(key)
        if key not in RESUME_NEUTRAL and theirs != ours:
            raise IfcnError(
                f"--resume auto: this checkpoint was written under other settings "
                f"(classify.{key} {theirs!r} -> {ours!r}); to start over delete "
                f"{path.parent} or choose another --out, to go on under the new settings "
                f"pass --resume {path}",
                path,
            )


def _train_step(
    model: nn.Module, sample: dict, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Tensor]:
    """Forward one image's RoIs, check the loss is finite on every rank, step the optimiser."""
    image = sample["image"][None].to(device, non_blocking=True)
    logits = model(image, sample["rois"].to(device), sample["grids"].to(device))
    labels = sample["labels"].to(device)
    losses = classification_loss(logits, labels)
    finite = distributed.all_reduce_mean(torch.isfinite(losses["loss"]).float().reshape(1))
    if finite.item() < 1.0:
        raise FloatingPointError(f"loss is {losses['loss'].item()}")
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    losses["num_bg"] = (labels == 0).sum().float()
    return {key: value.detach() for key, value in losses.items()}


def run_training(
    config: dict,
    proposals_path: str | Path,
    gt_path: str | Path,
    out_dir: str | Path,
    image_root: str | Path | None = None,
    init_from: str | Path | None = None,
    resume: str | None = None,
    device_name: str = "auto",
    workers: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Train the classifier; return the path of model_final.pt. IfcnError on bad input."""
    out_dir = Path(out_dir)
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
    if info.is_main:
        images.verify_images()
    distributed.barrier()

    resume_path = None
    if resume == "auto":
        resume_path = checkpoint.latest_checkpoint(out_dir)
    elif resume is not None:
        resume_path = Path(resume)
    state = None
    if resume_path is not None:
        state = checkpoint.load(resume_path)
        check_resumable(state, config, categories, resume_path, auto=resume == "auto")

    torch.manual_seed(cfg["seed"])
    from_checkpoint = init_from is not None or state is not None
    model = build_classifier(config, len(categories), pretrained=False if from_checkpoint else None)
    if init_from is not None and state is None:
        load_backbone_from(model, str(init_from), config)
    model.to(device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(cfg))
    start, total = 0, cfg["iters"]
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        start = int(state["iteration"])
    if start > total:
        raise IfcnError(
            f"checkpoint is at iteration {start}, beyond classify.iters={total}", resume_path
        )

    model_without_ddp = model
    if info.distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    samples = RoiSamples(images, proposals_path, categories, cfg)
    sampler = IterationSampler(len(samples), start, total, cfg["seed"], info.rank, info.world_size)
    loader = DataLoader(
        samples,
        batch_size=None,
        sampler=sampler,
        num_workers=cfg["workers"] if workers is None else workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_sigterm,
    )
    if info.is_main:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    log = TrainLog(out_dir / "classify_log.csv", start, enabled=info.is_main, columns=LOG_COLUMNS)

    def save(iteration: int) -> Path:
        path = checkpoint.checkpoint_path(out_dir, iteration)
        distributed.barrier()
        if info.is_main:
            checkpoint.save_atomic(
                {
                    "kind": KIND,
                    "model": model_without_ddp.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(),
                    "iteration": iteration,
                    "config": config,
                    "categories": categories,
                    "world_size": info.world_size,
                },
                path,
            )
            checkpoint.prune(out_dir, cfg["keep_checkpoints"])
        distributed.barrier()
        return path

    stop = StopRequest()
    previous_handler = signal.signal(signal.SIGTERM, stop)
    last_saved = resume_path
    model.train()
    progress = tqdm(
        total=total,
        initial=start,
        disable=not (show_progress and info.is_main),
        desc="classify train",
        dynamic_ncols=True,
    )
    try:
        iteration = start
        tick = time.perf_counter()
        for step, sample in enumerate(loader):
            iteration = start + step
            try:
                losses = _train_step(model, sample, optimizer, device)
            except FloatingPointError as exc:
                raise IfcnError(
                    f"{exc} at iteration {iteration}; nothing was updated; last good checkpoint: "
                    f"{last_saved or 'none'}",
                    out_dir,
                ) from None
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            iteration += 1
            log.update(losses | {"seconds": time.perf_counter() - tick})
            if iteration % cfg["log_period"] == 0 or iteration == total:
                means = log.write(iteration, lr, device)
                progress.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.2f}")
            if iteration % cfg["checkpoint_period"] == 0 and iteration < total:
                last_saved = save(iteration)
            progress.update(1)
            if distributed.broadcast_flag(stop.requested, device):
                path = save(iteration)
                raise IfcnError(
                    f"stopped by SIGTERM at iteration {iteration}; checkpoint {path} written; "
                    "rerun with --resume auto to continue",
                    out_dir,
                )
            tick = time.perf_counter()
        final_iteration = max(iteration, start)
        save(final_iteration)
        final = out_dir / "model_final.pt"
        if info.is_main:
            checkpoint.save_atomic(
                {
                    "kind": KIND,
                    "model": model_without_ddp.state_dict(),
                    "config": config,
                    "categories": categories,
                    "iteration": final_iteration,
                },
                final,
            )
        distributed.barrier()
        return final
    finally:
        progress.close()
        samples.close()
        signal.signal(signal.SIGTERM, previous_handler)


def main(args: argparse.Namespace) -> int:
    overrides = {"classify": {"iters": args.iters}} if args.iters is not None else None
    config = load_config(args.config, overrides)
    try:
        final = run_training(
            config,
            args.proposals,
            args.gt,
            args.out,
            image_root=args.images,
            init_from=args.init_from,
            resume=args.resume,
            device_name=args.device,
            workers=args.workers,
        )
    finally:
        distributed.cleanup()
    if distributed.dist_info_from_env().is_main:
        print(f"trained the classifier for {config['classify']['iters']} iterations: {final}")
    return 0
