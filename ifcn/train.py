"""`ifcn train`: image-centric training of InstanceFCN (paper §3.3, DESIGN §5).

One image per process per step, SGD with momentum 0.9 and weight decay 5e-4, lr multiplied by
``lr_gamma`` after ``lr_step`` of the iterations. Under torchrun each rank takes its own image
and DDP averages the gradients, so the effective batch is the world size. Checkpoints are
written atomically every ``checkpoint_period`` steps and at the end; ``--resume`` continues
exactly: data order, augmentation and window sampling of step i depend only on (seed, i, rank).
"""

from __future__ import annotations

import argparse
import copy
import signal
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ifcn import checkpoint, distributed
from ifcn.config import load_config, validate_config
from ifcn.criterion import build_criterion
from ifcn.data.coco import CocoInstances
from ifcn.engine import IterationSampler, TrainLog, step_seed, train_one_step
from ifcn.errors import IfcnError
from ifcn.model import build_model

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn train", description=__doc__, add_help=add_help)
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--out", required=True, help="output folder of the run")
    parser.add_argument("--iters", type=int, help="override train.iters")
    parser.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), help="mixed precision on CUDA")
    parser.add_argument("--workers", type=int, help="override train.workers")
    return parser


def build_lr_lambda(train_cfg: dict):
    """Step schedule of the paper (with an optional linear warm-up)."""
    step_at = int(round(train_cfg["lr_step"] * train_cfg["iters"]))
    warmup = train_cfg["warmup_iters"]
    gamma = train_cfg["lr_gamma"]

    def factor(iteration: int) -> float:
        ramp = min(1.0, (iteration + 1) / warmup) if warmup else 1.0
        return ramp * (gamma if iteration >= step_at else 1.0)

    return factor


def _resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        return checkpoint.latest_checkpoint(out_dir)
    return Path(resume)


class _StopRequest:
    """Turns SIGTERM (SLURM preemption) into a flag checked after every step."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True


def _ignore_sigterm(_worker_id: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_training(
    config: dict,
    out_dir: str | Path,
    resume: str | None = None,
    device_name: str = "auto",
    amp: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Train and return the path of model_final.pt. Raises IfcnError on bad input or faults."""
    out_dir = Path(out_dir)
    train_cfg = config["train"]
    info, device = distributed.init_distributed_mode(device_name)
    if amp is not None and device.type != "cuda":
        raise IfcnError(f"--amp {amp} needs a CUDA device; this run is on {device.type}")

    dataset = CocoInstances(
        config["data"]["train_json"],
        config["data"]["train_images"],
        scales=train_cfg["scales"],
        max_size=train_cfg["max_size"],
        flip=train_cfg["flip"],
    )
    if info.is_main:
        dataset.verify_images()
    distributed.barrier()

    resume_path = _resolve_resume(resume, out_dir)
    state = None
    if resume_path is not None:
        state = checkpoint.load(resume_path)
        checkpoint.check_compatible(state, config, resume_path)

    torch.manual_seed(train_cfg["seed"])
    model = build_model(config["model"]).to(device)
    criterion = build_criterion(config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=train_cfg["lr"],
        momentum=train_cfg["momentum"],
        weight_decay=train_cfg["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(train_cfg))
    amp_dtype = AMP_DTYPES.get(amp) if amp else None
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
    total = train_cfg["iters"]
    if start > total:
        raise IfcnError(
            f"checkpoint is at iteration {start}, beyond train.iters={total}", resume_path
        )

    model_without_ddp = model
    if info.distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    num_workers = train_cfg["workers"] if workers is None else workers
    sampler = IterationSampler(
        len(dataset), start, total, train_cfg["seed"], info.rank, info.world_size
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_sigterm,
        persistent_workers=False,
    )

    if info.is_main:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    log = TrainLog(out_dir / "train_log.csv", start, enabled=info.is_main)

    def save(iteration: int) -> Path:
        path = checkpoint.checkpoint_path(out_dir, iteration)
        distributed.barrier()
        if info.is_main:
            checkpoint.save_atomic(
                {
                    "model": model_without_ddp.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "iteration": iteration,
                    "config": config,
                    "world_size": info.world_size,
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    },
                },
                path,
            )
            checkpoint.prune(out_dir, train_cfg["keep_checkpoints"])
        distributed.barrier()
        return path

    stop = _StopRequest()
    previous_handler = signal.signal(signal.SIGTERM, stop)
    last_saved = resume_path
    model.train()
    progress = tqdm(
        total=total,
        initial=start,
        disable=not (show_progress and info.is_main),
        desc="train",
        dynamic_ncols=True,
    )
    try:
        iteration = start
        tick = time.perf_counter()
        for sample_index, sample in enumerate(loader):
            iteration = start + sample_index
            data_seconds = time.perf_counter() - tick
            generator = torch.Generator().manual_seed(
                step_seed(train_cfg["seed"] + 1, iteration, info.rank)
            )
            try:
                losses = train_one_step(
                    model, criterion, sample, optimizer, device, generator, scaler, amp_dtype
                )
            except FloatingPointError as exc:
                raise IfcnError(
                    f"{exc} at iteration {iteration}; nothing was updated; last good checkpoint: "
                    f"{last_saved or 'none'}",
                    out_dir,
                ) from None
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            iteration += 1
            log.update(
                {key: value.item() for key, value in losses.items() if key != "loss"}
                | {
                    "loss": losses["loss"].item(),
                    "data_seconds": data_seconds,
                    "seconds": time.perf_counter() - tick,
                }
            )
            if iteration % train_cfg["log_period"] == 0 or iteration == total:
                means = log.write(iteration, lr, device)
                progress.set_postfix(loss=f"{means['loss']:.3f}", pos=f"{means['num_pos']:.0f}")
            if iteration % train_cfg["checkpoint_period"] == 0 and iteration < total:
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
                    "model": model_without_ddp.state_dict(),
                    "config": config,
                    "iteration": final_iteration,
                },
                final,
            )
        distributed.barrier()
        return final
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, previous_handler)


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.iters is not None:
        config = copy.deepcopy(config)
        config["train"]["iters"] = args.iters
        config = validate_config(config, args.config)
    try:
        run_training(config, args.out, args.resume, args.device, args.amp, args.workers)
    finally:
        distributed.cleanup()
    print(f"trained {config['train']['iters']} iterations: {Path(args.out) / 'model_final.pt'}")
    return 0
