"""InstanceFCN's training run: the model, criterion, optimiser and loss columns handed to the
one training loop (`ifcn.training.engine`).

The command `ifcn train` is `ifcn.commands.train`, whose docstring says what a run does.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from ifcn.criterion import build_criterion
from ifcn.data.crops import build_train_dataset
from ifcn.data.overlap import require_disjoint
from ifcn.data.store import ImageSet, open_store
from ifcn.errors import IfcnError
from ifcn.model import build_model, parameter_groups
from ifcn.training import checkpoint, distributed, engine
from ifcn.training.hooks import lr_scheduler
from ifcn.training.log import LogFormat
from ifcn.training.run_folder import output_folder, start_run
from ifcn.training.sampler import step_seed

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The run folder's record of a training JSON that no `data check` recorded (ifcn.data.store).
ANNOTATIONS = "annotations"
# train_log.csv: the terms of eq. (1), the windows they were taken on, and timings
LOG = LogFormat(
    name="train_log.csv",
    columns=(
        "iteration",
        "loss",
        "loss_objectness",
        "loss_mask",
        "lr",
        "num_pos",
        "num_neg",
        "data_seconds",
        "seconds",
    ),
    desc="train",
    postfix={"loss": "loss", "pos": "num_pos"},
)


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


def require_unseen_val(data: dict, train: ImageSet | None = None) -> None:
    """Refuse to train on evaluation images (paper §4.1): the config's val JSON, when it exists,
    must share no image with the training JSON (its image set `train`, when read already) unless
    ``data.allow_shared_images``."""
    val_json = data.get("val_json")
    if data.get("allow_shared_images") or not val_json or not Path(val_json).is_file():
        return
    if Path(val_json).resolve() == Path(data["train_json"]).resolve():
        raise IfcnError(
            "the training JSON is also the evaluation JSON (data.train_json = data.val_json); "
            "set data.allow_shared_images: true if that is meant",
            val_json,
        )
    require_disjoint(
        data["train_json"], val_json, data["train_images"], data["val_images"], train=train
    )


def run_training(
    config: dict,
    out_dir: str | Path,
    resume: str | None = None,
    device_name: str = "auto",
    amp: str | None = None,
    show_progress: bool = True,
    cudnn_benchmark: bool = False,
) -> Path:
    """Train and return the path of model_final.pt. Raises IfcnError on bad input or faults."""
    out_dir = output_folder(out_dir)
    train_cfg = config["train"]
    info, device = distributed.init_distributed_mode(device_name)
    amp_dtype = _amp_dtype(amp, device)

    made = {}
    annotations = out_dir / ANNOTATIONS

    def prepare() -> None:
        """The training JSON's checked annotations (its check record, a record of this run, or
        the JSON validated now), its image files, no evaluation image among them."""
        made["dataset"] = build_train_dataset(config, cache_dir=annotations)
        made["dataset"].verify_images()
        require_unseen_val(config["data"], made["dataset"].store.image_set())

    distributed.run_on_main(prepare, device)

    def check_resumable(state: dict, path: Path, auto: bool) -> None:
        checkpoint.check_compatible(state, config, path)
        difference = checkpoint.training_difference(state["config"], config) if auto else None
        if difference is not None:
            raise checkpoint.other_settings_error(difference, path)

    with start_run(
        out_dir, resume, info, device,
        kind=checkpoint.PROPOSAL_MODEL, check=check_resumable, iters=train_cfg["iters"],
        show_progress=show_progress,
    ) as run, contextlib.ExitStack() as stack:  # fmt: skip
        # a validation made now is recorded in the run folder, for the other ranks and resumes
        record = distributed.run_on_main(lambda: str(made["dataset"].record(annotations)), device)
        dataset = made.get("dataset") or build_train_dataset(
            config, store=open_store(record, config["data"]["train_json"])
        )
        stack.callback(dataset.close)  # the record's mapping: nothing holds the run folder
        torch.manual_seed(train_cfg["seed"])
        model = build_model(config["model"]).to(device)
        criterion = build_criterion(config, model)
        optimizer = torch.optim.SGD(
            parameter_groups(model, train_cfg["lr"], train_cfg["backbone_lr_mult"]),
            lr=train_cfg["lr"],
            momentum=train_cfg["momentum"],
            weight_decay=train_cfg["weight_decay"],
        )
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
            lr_scheduler(optimizer, train_cfg),
            dataset,
            train_cfg,
            run,
            log=LOG,
            extras={"kind": checkpoint.PROPOSAL_MODEL, "config": config},
            scaler=torch.amp.GradScaler(device.type) if amp == "fp16" else None,
        )
