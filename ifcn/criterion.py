"""The training loss of eq. (1): objectness on sampled windows + per-pixel mask loss on positives.

Kept apart from the model (DETR's habit): the criterion labels every window position of the
image with :mod:`ifcn.windows`, samples up to ``windows_per_image`` of them at up to
``positive_fraction`` positives, assembles the positives' instances with
:func:`ifcn.assemble.assemble_sparse` and compares them with the ground truth cropped to the
window. Each term is a mean (over sampled windows; over the positives' in-image pixels), so the
two are on the same footing whatever the number of windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifcn.assemble import assemble_sparse
from ifcn.windows import (
    POSITIVE,
    LabelRule,
    cell_grid,
    label_windows,
    mask_targets,
    sample_windows,
    top_left_of_cell,
)


class InstanceFCNCriterion(nn.Module):
    def __init__(
        self, rule: LabelRule, windows_per_image: int = 256, positive_fraction: float = 0.5
    ):
        super().__init__()
        self.rule = rule
        self.windows_per_image = windows_per_image
        self.positive_fraction = positive_fraction

    def forward(
        self, outputs: dict[str, Tensor], target: dict, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Losses for one image: ``outputs`` of the model for a batch of one, ``target`` a sample.

        ``target`` holds ``boxes`` [N, 4], ``masks`` [N, H, W] and ``iscrowd`` [N] at the
        resolution the network saw.
        """
        objectness = outputs["objectness"][0, 0]
        height, width = objectness.shape
        device = objectness.device
        m = self.rule.m
        tops = top_left_of_cell(cell_grid(height, width, device), m)
        labels, matched = label_windows(
            tops, target["boxes"].to(device), target["iscrowd"].to(device), self.rule
        )
        pos, neg = sample_windows(labels, self.windows_per_image, self.positive_fraction, generator)
        sampled = torch.cat([pos, neg])
        logits = objectness.reshape(-1)[sampled]
        obj_targets = (labels[sampled] == POSITIVE).to(logits.dtype)
        if len(sampled):
            loss_objectness = F.binary_cross_entropy_with_logits(logits, obj_targets)
        else:
            loss_objectness = objectness.sum() * 0.0
        loss_mask = self._mask_loss(outputs, target, tops[pos], matched[pos])
        return {
            "loss": loss_objectness + loss_mask,
            "loss_objectness": loss_objectness,
            "loss_mask": loss_mask,
            "num_pos": torch.tensor(float(len(pos)), device=device),
            "num_neg": torch.tensor(float(len(neg)), device=device),
        }

    def _mask_loss(self, outputs: dict[str, Tensor], target: dict, tops: Tensor, instance: Tensor):
        scores = outputs["scores"][0]
        if len(tops) == 0:
            return scores.sum() * 0.0
        assembled = assemble_sparse(scores, tops, self.rule.m)
        masks = target["masks"].to(scores.device)
        gt, valid = mask_targets(masks, instance, tops, self.rule.m, self.rule.stride)
        per_pixel = F.binary_cross_entropy_with_logits(assembled, gt, reduction="none")
        return per_pixel[valid].mean() if valid.any() else scores.sum() * 0.0


def build_criterion(config: dict) -> InstanceFCNCriterion:
    train = config["train"]
    return InstanceFCNCriterion(
        LabelRule.from_config(config), train["windows_per_image"], train["positive_fraction"]
    )
