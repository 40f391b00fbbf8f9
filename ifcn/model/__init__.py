"""The InstanceFCN network (paper §3.3, Fig. 4): a stride-8 backbone and two branches.

``forward`` returns logits only; the assembling module, window geometry and the loss live in
their own modules and read these outputs. The objectness logit at feature cell (y, x) scores
the window *centred* on that cell, i.e. the window whose top-left cell is
(y − m//2, x − m//2) (the paper: "the sliding window centered at this pixel").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ifcn.config import load_schema
from ifcn.errors import IfcnError
from ifcn.model.backbone import build_backbone
from ifcn.model.heads import DeepMaskHead, DeepMaskScoring, InstanceBranch, ObjectnessBranch
from ifcn.training import checkpoint
from ifcn.windows import STRIDE

HEADS = ("instancefcn", "deepmask")
DEEPMASK_SCORING = ("fc", "conv")


def model_defaults() -> dict:
    """The ``model`` section's defaults, read from the config schema (their one source)."""
    properties = load_schema()["properties"]["model"]["properties"]
    return {key: spec["default"] for key, spec in properties.items()}


def check_network(head: str, k: int, m: int, deepmask_scoring: str) -> None:
    """IfcnError (one line) unless these settings describe a network: a known head and scoring
    and a window of m cells that holds k×k relative positions (m >= k)."""
    if head not in HEADS:
        raise IfcnError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if deepmask_scoring not in DEEPMASK_SCORING:
        raise IfcnError(
            f"unknown model.deepmask_scoring {deepmask_scoring!r}; "
            f"choose one of {', '.join(DEEPMASK_SCORING)}"
        )
    if m < k:
        raise IfcnError(
            f"model.m = {m} is smaller than model.k = {k}: a window of m cells "
            "cannot hold k relative positions per side; choose m >= k"
        )


def check_model_config(model_cfg: dict) -> dict:
    """The ``model`` section with schema defaults filled in; IfcnError (one line) for unknown
    keys or settings `check_network` refuses. Builds nothing, so a workflow can call it before
    any job."""
    defaults = model_defaults()
    unknown = sorted(set(model_cfg) - set(defaults))
    if unknown:
        raise IfcnError(f"unknown model config keys: {', '.join(unknown)}")
    cfg = {**defaults, **model_cfg}
    check_network(cfg["head"], cfg["k"], cfg["m"], cfg["deepmask_scoring"])
    return cfg


class InstanceFCN(nn.Module):
    """Backbone + instance branch (k² score maps) or ~DeepMask head, + objectness branch.

    With ``head="deepmask"`` the instance branch is replaced by ``mask_head``
    (:class:`~ifcn.model.heads.DeepMaskHead`), whose masks come from
    ``mask_head.forward_windows(features, batch_index, tops)``, and the objectness comes from
    DeepMask's fc scoring branch (:class:`~ifcn.model.heads.DeepMaskScoring`) unless
    ``deepmask_scoring="conv"`` keeps InstanceFCN's conv branch. In training mode the fc
    scoring branch is not run densely: the criterion scores only its sampled windows with
    ``objectness_branch.forward_windows``, and ``forward`` returns no ``objectness``.
    """

    stride = STRIDE

    def __init__(
        self,
        backbone: nn.Module,
        head: str = "instancefcn",
        k: int = 5,
        m: int = 21,
        head_channels: int = 512,
        deepmask_scoring: str = "fc",
    ) -> None:
        super().__init__()
        check_network(head, k, m, deepmask_scoring)
        if backbone.stride != STRIDE:
            raise IfcnError(
                f"backbone has stride {backbone.stride}; the window geometry "
                f"(ifcn.windows.STRIDE) needs {STRIDE}"
            )
        self.backbone = backbone
        self.head, self.k, self.m = head, k, m
        channels = backbone.out_channels
        if head == "instancefcn":
            self.instance_branch = InstanceBranch(channels, k, hidden=head_channels)
        else:
            self.mask_head = DeepMaskHead(channels, m=m, hidden=head_channels)
        if head == "deepmask" and deepmask_scoring == "fc":
            self.objectness_branch = DeepMaskScoring(channels, m=m, hidden=head_channels)
        else:
            self.objectness_branch = ObjectnessBranch(channels, hidden=head_channels)

    @property
    def sparse_objectness(self) -> bool:
        """Whether training scores sampled windows only (DeepMask's fc scoring branch)."""
        return isinstance(self.objectness_branch, DeepMaskScoring)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] images → features [B, C, h, w], objectness logits [B, 1, h, w] (not
        in training mode with DeepMask's fc scoring) and, for the instancefcn head,
        instance-sensitive score logits ``scores`` [B, k², h, w]; h, w = ceil(H/8), ceil(W/8)."""
        features = self.backbone(images)
        out = {"features": features}
        if not (self.training and self.sparse_objectness):
            out["objectness"] = self.objectness_branch(features)
        if self.head == "instancefcn":
            out["scores"] = self.instance_branch(features)
        return out


def build_model(model_cfg: dict) -> InstanceFCN:
    """The network described by the config's ``model`` section (missing keys: schema defaults)."""
    cfg = check_model_config(model_cfg)
    backbone = build_backbone(cfg["backbone"], cfg["pretrained"], cfg["weights"])
    return InstanceFCN(
        backbone,
        head=cfg["head"],
        k=cfg["k"],
        m=cfg["m"],
        head_channels=cfg["head_channels"],
        deepmask_scoring=cfg["deepmask_scoring"],
    )


def parameter_groups(model: InstanceFCN, lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """The optimiser's parameter groups: the new layers (the branches) at ``lr`` first, the lr
    a log shows, then the backbone at ``lr × backbone_lr_mult``; frozen parameters are left
    out. One group when the multiplier is 1."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr_mult == 1.0:
        return [{"params": trainable, "lr": lr}]
    backbone = {id(p) for p in model.backbone.parameters()}
    return [
        {"params": [p for p in trainable if id(p) not in backbone], "lr": lr},
        {"params": [p for p in trainable if id(p) in backbone], "lr": lr * backbone_lr_mult},
    ]


def load_model(
    config: dict, checkpoint_path: str | Path, device: torch.device | str
) -> InstanceFCN:
    """The config's network with the checkpoint's weights, in eval mode on ``device``.

    IfcnError naming the checkpoint if it was trained for another model.
    """
    state = checkpoint.load(checkpoint_path)
    checkpoint.check_compatible(state, config, checkpoint_path)
    model = build_model({**config["model"], "pretrained": False})
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise IfcnError(
            f"weights do not fit the config's model ({first})", checkpoint_path
        ) from None
    return model.to(device).eval()
