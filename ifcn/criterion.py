"""The training loss of eq. (1): objectness on sampled windows + per-pixel mask loss on positives.

Kept apart from the model (DETR's habit): the criterion labels every window position of the
image with :mod:`ifcn.windows`, samples up to ``windows_per_image`` of them at up to
``positive_fraction`` positives, assembles the positives' instances with
:func:`ifcn.assemble.assemble_sparse` and compares them with the ground truth cropped to the
window.

Loss weighting: eq. (1) is a plain sum over the sampled windows i and their pixels j. By
default (``train.loss_reduction: mean``, our choice, not the paper's) each term is instead a
mean (objectness over the sampled windows; mask over the positives' in-image pixels) and the
two are added 1:1, so they are on the same footing whatever the number of windows and pixels
and the learning rate does not depend on them. ``sum`` is eq. (1) literally.

The ~DeepMask baseline (paper Table 2) is trained by the same criterion with two changes: its
positives' masks come from the model's fc mask head (``mask_head.forward_windows`` on the
backbone features) at the head's own resolution (56×56), against targets cut from the same
window box by the same :func:`ifcn.windows.mask_targets`; and with DeepMask's fc scoring
branch the sampled windows are scored one by one (``objectness_branch.forward_windows``)
rather than read off a dense map, as DeepMask trains on crops. Labels, sampling and the
objectness term are shared, so both heads are trained on equal terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifcn.assemble import assemble_sparse
from ifcn.errors import IfcnError
from ifcn.windows import (
    POSITIVE,
    LabelRule,
    cell_grid,
    label_windows,
    mask_targets,
    sample_windows,
    top_left_of_cell,
)

REDUCTIONS = ("mean", "sum")


class InstanceFCNCriterion(nn.Module):
    def __init__(
        self,
        rule: LabelRule,
        windows_per_image: int = 256,
        positive_fraction: float = 0.5,
        reduction: str = "mean",
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise IfcnError(
                f"unknown train.loss_reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        self.rule = rule
        self.windows_per_image = windows_per_image
        self.positive_fraction = positive_fraction
        self.reduction = reduction

    def reduce(self, losses: Tensor) -> Tensor:
        """Per-window or per-pixel losses → one term: their mean, or eq. (1)'s plain sum."""
        return losses.mean() if self.reduction == "mean" else losses.sum()

    def forward(
        self, outputs: dict[str, Tensor], target: dict, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Losses for one image: ``outputs`` of the model for a batch of one, ``target`` a sample.

        ``target`` holds ``boxes`` [N, 4], ``masks`` [N, H, W] and ``iscrowd`` [N] at the
        resolution the network saw.
        """
        height, width = outputs["features"].shape[-2:]
        device = outputs["features"].device
        m = self.rule.m
        tops = top_left_of_cell(cell_grid(height, width, device), m)
        labels, matched = label_windows(
            tops, target["boxes"].to(device), target["iscrowd"].to(device), self.rule
        )
        pos, neg = sample_windows(labels, self.windows_per_image, self.positive_fraction, generator)
        sampled = torch.cat([pos, neg])
        logits = self._objectness(outputs, tops, sampled)
        obj_targets = (labels[sampled] == POSITIVE).to(logits.dtype)
        if len(sampled):
            loss_objectness = self.reduce(
                F.binary_cross_entropy_with_logits(logits, obj_targets, reduction="none")
            )
        else:
            loss_objectness = logits.sum() * 0.0
        loss_mask = self._mask_loss(outputs, target, tops[pos], matched[pos])
        return {
            "loss": loss_objectness + loss_mask,
            "loss_objectness": loss_objectness,
            "loss_mask": loss_mask,
            "num_pos": torch.tensor(float(len(pos)), device=device),
            "num_neg": torch.tensor(float(len(neg)), device=device),
        }

    def _objectness(self, outputs: dict[str, Tensor], tops: Tensor, sampled: Tensor) -> Tensor:
        """Objectness logits [len(sampled)] of the sampled window positions."""
        return outputs["objectness"][0, 0].reshape(-1)[sampled]

    def _mask_loss(self, outputs: dict[str, Tensor], target: dict, tops: Tensor, instance: Tensor):
        scores = outputs["scores"][0]
        if len(tops) == 0:
            return scores.sum() * 0.0
        assembled = assemble_sparse(scores, tops, self.rule.m)
        masks = target["masks"].to(scores.device)
        gt, valid = mask_targets(masks, instance, tops, self.rule.m, self.rule.stride)
        per_pixel = F.binary_cross_entropy_with_logits(assembled, gt, reduction="none")
        return self.reduce(per_pixel[valid]) if valid.any() else scores.sum() * 0.0


class DeepMaskCriterion(InstanceFCNCriterion):
    """Eq. (1) for the ~DeepMask head: the mask term reads the fc head's mask_size² logits.

    The criterion holds the model's ``mask_head`` and, with DeepMask's fc scoring, its
    ``scoring`` branch (not copies): their forward runs here, on the ``features`` output,
    because only the criterion knows which windows are sampled and which are positive.
    """

    def __init__(
        self,
        rule: LabelRule,
        mask_head: nn.Module,
        windows_per_image: int = 256,
        positive_fraction: float = 0.5,
        scoring: nn.Module | None = None,
        reduction: str = "mean",
    ):
        super().__init__(rule, windows_per_image, positive_fraction, reduction)
        # not registered as submodules: the model owns, saves and optimises them
        object.__setattr__(self, "mask_head", mask_head)
        object.__setattr__(self, "scoring", scoring)

    def _objectness(self, outputs: dict[str, Tensor], tops: Tensor, sampled: Tensor) -> Tensor:
        if "objectness" in outputs or self.scoring is None:
            return super()._objectness(outputs, tops, sampled)
        features = outputs["features"]
        if not len(sampled):
            # empty, yet touching every scoring weight, so DDP sees all of them take a gradient
            touch = sum(p.sum() for p in self.scoring.parameters()) * 0.0
            return features.new_zeros(0) + touch
        batch_index = torch.zeros(len(sampled), dtype=torch.long, device=features.device)
        return self.scoring.forward_windows(features, batch_index, tops[sampled]).float()

    def _mask_loss(self, outputs: dict[str, Tensor], target: dict, tops: Tensor, instance: Tensor):
        features = outputs["features"]
        head = self.mask_head
        if len(tops) == 0:
            # zero, yet touching every head weight, so DDP sees all of them take a gradient
            return features.sum() * 0.0 + sum(p.sum() for p in head.parameters()) * 0.0
        batch_index = torch.zeros(len(tops), dtype=torch.long, device=features.device)
        logits = head.forward_windows(features, batch_index, tops).float()
        masks = target["masks"].to(features.device)
        gt, valid = mask_targets(
            masks, instance, tops, self.rule.m, self.rule.stride, size=head.mask_size
        )
        per_pixel = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
        return self.reduce(per_pixel[valid]) if valid.any() else logits.sum() * 0.0


def build_criterion(config: dict, model: nn.Module | None = None) -> InstanceFCNCriterion:
    """The loss of the config's head; the ~DeepMask head's loss needs the model it trains."""
    train = config["train"]
    rule = LabelRule.from_config(config)
    if config["model"]["head"] == "deepmask":
        bare = getattr(model, "module", model)  # DDP or bare
        head = getattr(bare, "mask_head", None)
        if head is None:
            raise IfcnError(
                "model.head is deepmask: build_criterion needs the model, whose mask_head "
                "computes the positives' masks"
            )
        scoring = bare.objectness_branch if bare.sparse_objectness else None
        return DeepMaskCriterion(
            rule,
            head,
            train["windows_per_image"],
            train["positive_fraction"],
            scoring,
            train["loss_reduction"],
        )
    return InstanceFCNCriterion(
        rule, train["windows_per_image"], train["positive_fraction"], train["loss_reduction"]
    )
