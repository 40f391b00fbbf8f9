"""`ifcn train`: image-centric training of InstanceFCN (paper §3.3, DESIGN §5).

One image per process per step, SGD with momentum 0.9 and weight decay 5e-4, lr multiplied by
``lr_gamma`` after ``lr_step`` of the iterations. The same command runs as one process or under
``torchrun`` / ``srun`` (see ifcn.distributed and docs/slurm.md): each rank takes its own image
and DDP averages the gradients, so the effective batch is the world size W and ``train.iters``
counts optimiser steps of W images (config/README.md says how to scale iters and lr with W).
Checkpoints are written by rank 0 alone, atomically, every ``checkpoint_period`` steps and at
the end; ``--resume`` continues exactly: data order, augmentation and window sampling of step i
depend only on (seed, i, rank). SIGTERM (SLURM preemption, torchrun shutting down) makes every
rank finish its step, rank 0 write a checkpoint, and all exit with an error that says so.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ifcn import checkpoint, distributed
from ifcn.config import load_config
from ifcn.criterion import build_criterion
from ifcn.data.crops import build_train_dataset
from ifcn.engine import (
    IterationSampler,
    StopRequest,
    TrainLog,
    build_lr_lambda,
    ignore_sigterm,
    step_seed,
    train_one_step,
)
from ifcn.errors import IfcnError
from ifcn.model import build_model

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn train", description=__doc__, add_help=add_help)
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--out", required=True, help="output folder of the run")
    parser.add_argument("--iters", type=int, help="override train.iters (optimiser steps)")
    parser.add_argument(
        "--resume",
        help="checkpoint to continue from, or 'auto' for the newest complete one of --out "
        "(none: start from scratch)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), help="mixed precision on CUDA")
    parser.add_argument("--workers", type=int, help="override train.workers")
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its algorithms per input shape: faster when image sizes repeat "
        "(a fixed-size dataset), slower when most images bring a new size (COCO at several "
        "scales), so off by default",
    )
    return parser


def _amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    if amp is None:
        return None
    if device.type != "cuda":
        raise IfcnError(f"--amp {amp} needs a CUDA device; this run is on {device.type}")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise IfcnError("--amp bf16 needs a GPU with bfloat16 (Ampere or newer); use --amp fp16")
    return AMP_DTYPES[amp]


def _resolve_resume(
    resume: str | None,
    out_dir: Path,
    config: dict,
    info: distributed.DistInfo,
    device: torch.device,
) -> tuple[Path | None, dict | None]:
    """The checkpoint to continue from and its contents; rank 0 alone chooses for `auto`."""
    if resume is None:
        return None, None
    if resume != "auto":
        path = Path(resume)
        state = checkpoint.load(path)
        checkpoint.check_compatible(state, config, path)
        return path, state
    found = checkpoint.load_latest(out_dir) if info.is_main else None
    chosen = distributed.broadcast_object(None if found is None else str(found[0]), device)
    if chosen is None:
        return None, None
    path = Path(chosen)
    state = found[1] if found is not None else checkpoint.load(path)
    checkpoint.check_compatible(state, config, path)
    difference = checkpoint.training_difference(state["config"], config)
    if difference is not None:
        raise IfcnError(
            f"--resume auto: this checkpoint was written under other settings ({difference}); "
            f"to start over delete {out_dir / 'checkpoints'} or choose another --out, to go on "
            f"under the new settings pass --resume {path}",
            path,
        )
    return path, state


def _weights_finite(model: nn.Module) -> bool:
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def run_training(
    config: dict,
    out_dir: str | Path,
    resume: str | None = None,
    device_name: str = "auto",
    amp: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    cudnn_benchmark: bool = False,
) -> Path:
    """Train and return the path of model_final.pt. Raises IfcnError on bad input or faults."""
    out_dir = Path(out_dir)
    train_cfg = config["train"]
    info, device = distributed.init_distributed_mode(device_name)
    amp_dtype = _amp_dtype(amp, device)

    dataset = build_train_dataset(config)
    problem = None
    if info.is_main:
        try:
            dataset.verify_images()
        except IfcnError as exc:
            problem = exc
        checkpoint.remove_temporaries(out_dir)
    problem = distributed.broadcast_object(problem, device)
    if problem is not None:
        raise problem

    resume_path, state = _resolve_resume(resume, out_dir, config, info, device)

    torch.manual_seed(train_cfg["seed"])
    model = build_model(config["model"]).to(device)
    criterion = build_criterion(config, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=train_cfg["lr"],
        momentum=train_cfg["momentum"],
        weight_decay=train_cfg["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(train_cfg))
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
        torch.backends.cudnn.benchmark = cudnn_benchmark

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
        worker_init_fn=ignore_sigterm,
        persistent_workers=False,
    )

    if info.is_main:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    log = TrainLog(out_dir / "train_log.csv", start, enabled=info.is_main)
    last_good = resume_path
    saved_at = start if state is not None else None

    def save(iteration: int) -> Path:
        """Rank 0 writes the checkpoint of ``iteration``; no rank goes on until it exists."""
        if not _weights_finite(model_without_ddp):
            raise IfcnError(
                f"weights are not finite after iteration {iteration}; not saved; "
                f"last good checkpoint: {last_good or 'none'}",
                out_dir,
            )
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

    if info.is_main and show_progress:
        notes = [f"resuming from {resume_path} at iteration {start}"] if state else []
        if state is not None and state.get("world_size", info.world_size) != info.world_size:
            notes.append(
                f"the checkpoint was written by {state['world_size']} processes, this run has "
                f"{info.world_size}: the image order differs from an uninterrupted run"
            )
        print(
            f"ifcn train: {info.world_size} process(es) x 1 image per step on {device.type}, "
            f"steps {start}..{total}" + "".join(f"; {note}" for note in notes),
            file=sys.stderr,
        )

    stop = StopRequest()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    model.train()
    progress = tqdm(
        total=total,
        initial=start,
        disable=not (show_progress and info.is_main),
        desc="train",
        dynamic_ncols=True,
    )
    seed = train_cfg["seed"]
    iteration = start
    try:
        tick = time.perf_counter()
        for sample in loader:
            data_seconds = time.perf_counter() - tick
            generator = torch.Generator().manual_seed(step_seed(seed + 1, iteration, info.rank))
            try:
                losses = train_one_step(
                    model, criterion, sample, optimizer, device, generator, scaler, amp_dtype
                )
            except FloatingPointError as exc:
                raise IfcnError(
                    f"{exc} at iteration {iteration + 1}; the weights were not updated; "
                    f"last good checkpoint: {last_good or 'none'}",
                    out_dir,
                ) from None
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            iteration += 1
            log.update(
                losses | {"data_seconds": data_seconds, "seconds": time.perf_counter() - tick}
            )
            if iteration % train_cfg["log_period"] == 0 or iteration == total:
                means = log.write(iteration, lr, device)
                progress.set_postfix(loss=f"{means['loss']:.3f}", pos=f"{means['num_pos']:.0f}")
            progress.update(1)
            if iteration % train_cfg["checkpoint_period"] == 0 and iteration < total:
                last_good, saved_at = save(iteration), iteration
            if distributed.broadcast_flag(stop.requested, device):
                path = last_good if saved_at == iteration else save(iteration)
                raise IfcnError(
                    f"stopped by SIGTERM at iteration {iteration}; checkpoint {path} written; "
                    "rerun with --resume auto to continue",
                    out_dir,
                )
            tick = time.perf_counter()
        if saved_at != iteration:
            save(iteration)
        final = out_dir / "model_final.pt"
        if info.is_main:
            checkpoint.save_atomic(
                {"model": model_without_ddp.state_dict(), "config": config, "iteration": iteration},
                final,
            )
        distributed.barrier()
        return final
    finally:
        progress.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler or signal.SIG_DFL)


def main(args: argparse.Namespace) -> int:
    overrides = {"train": {"iters": args.iters}} if args.iters is not None else None
    config = load_config(args.config, overrides)
    try:
        final = run_training(
            config,
            args.out,
            args.resume,
            args.device,
            args.amp,
            args.workers,
            cudnn_benchmark=args.cudnn_benchmark,
        )
    finally:
        distributed.cleanup()
    if distributed.dist_info_from_env().is_main:
        print(f"trained {config['train']['iters']} iterations: {final}")
    return 0
