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
import contextlib
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from ifcn import checkpoint, distributed, engine
from ifcn.config import load_config
from ifcn.criterion import build_criterion
from ifcn.data.crops import build_train_dataset
from ifcn.data.overlap import require_disjoint
from ifcn.engine import build_lr_lambda, step_seed
from ifcn.errors import IfcnError
from ifcn.model import build_model, parameter_groups

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
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when there is a GPU; an error on a job given GPUs that CUDA cannot "
        "use) | cpu | cuda",
    )
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


def _instance_losses(
    model: nn.Module,
    sample: dict,
    iteration: int,
    *,
    criterion: nn.Module,
    device: torch.device,
    seed: int,
    rank: int,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """The loss of eq. (1) on one image; its windows are sampled by (seed, iteration, rank)."""
    image = sample["image"][None].to(device, non_blocking=True)
    target = {
        key: sample[key].to(device, non_blocking=True) for key in ("boxes", "masks", "iscrowd")
    }
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        outputs = model(image)
    outputs = {key: value.float() for key, value in outputs.items()}
    generator = torch.Generator().manual_seed(step_seed(seed + 1, iteration, rank))
    return criterion(outputs, target, generator)


def require_unseen_val(data: dict) -> None:
    """Refuse to train on evaluation images (paper §4.1): the config's val JSON, when it exists,
    must share no image with the training JSON unless ``data.allow_shared_images``."""
    val_json = data.get("val_json")
    if data.get("allow_shared_images") or not val_json or not Path(val_json).is_file():
        return
    if Path(val_json).resolve() == Path(data["train_json"]).resolve():
        raise IfcnError(
            "the training JSON is also the evaluation JSON (data.train_json = data.val_json); "
            "set data.allow_shared_images: true if that is meant",
            val_json,
        )
    require_disjoint(data["train_json"], val_json, data["train_images"], data["val_images"])


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
    out_dir = engine.output_folder(out_dir)
    train_cfg = config["train"]
    engine.worker_count(workers, train_cfg["workers"])
    info, device = distributed.init_distributed_mode(device_name)
    amp_dtype = _amp_dtype(amp, device)

    dataset = build_train_dataset(config)

    def check() -> None:
        dataset.verify_images()
        require_unseen_val(config["data"])
        checkpoint.remove_temporaries(out_dir)

    distributed.run_on_main(check, device)

    def check_resumable(state: dict, path: Path, auto: bool) -> None:
        checkpoint.check_compatible(state, config, path)
        difference = checkpoint.training_difference(state["config"], config) if auto else None
        if difference is not None:
            raise checkpoint.other_settings_error(difference, path)

    resume_from = engine.resolve_resume(
        resume, out_dir, info, device, checkpoint.PROPOSAL_MODEL, check_resumable
    )

    torch.manual_seed(train_cfg["seed"])
    model = build_model(config["model"]).to(device)
    criterion = build_criterion(config, model)
    optimizer = torch.optim.SGD(
        parameter_groups(model, train_cfg["lr"], train_cfg["backbone_lr_mult"]),
        lr=train_cfg["lr"],
        momentum=train_cfg["momentum"],
        weight_decay=train_cfg["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(train_cfg))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    loss_fn = functools.partial(
        _instance_losses,
        criterion=criterion,
        device=device,
        seed=train_cfg["seed"],
        rank=info.rank,
        amp_dtype=amp_dtype,
    )
    return engine.fit(
        model,
        loss_fn,
        optimizer,
        scheduler,
        dataset,
        train_cfg,
        out_dir,
        info,
        device,
        resume=resume_from,
        workers=workers,
        extras={"kind": checkpoint.PROPOSAL_MODEL, "config": config},
        postfix={"loss": "loss", "pos": "num_pos"},
        desc="train",
        scaler=torch.amp.GradScaler(device.type) if amp == "fp16" else None,
        show_progress=show_progress,
        tensorboard=train_cfg["tensorboard"],
    )


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
