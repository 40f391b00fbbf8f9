"""The branches on top of the stride-8 features (paper §3.3, Fig. 4) and the ~DeepMask head.

InstanceFCN's mask layers are independent of the mask resolution m: the instance branch
outputs k² score maps that the assembling module (``ifcn.assemble``) copies into m×m windows.
The ~DeepMask baseline (paper Table 2) regresses each window's mask with fc layers instead, so
its parameters grow with the mask side; both share the objectness branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align


def init_new_layers(module: nn.Module, std: float = 0.01) -> None:
    """Gaussian N(0, std²) weights and zero biases for layers not from ImageNet (paper §3.3)."""
    for mod in module.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(mod.weight, mean=0.0, std=std)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


class InstanceBranch(nn.Module):
    """1×1 conv ``hidden`` + ReLU, then a 3×3 conv with k² outputs: instance-sensitive logits.

    Score map c = i·k + j scores "this cell is at relative position (i, j) of an instance"
    (row i, column j of the k×k grid), the order ``ifcn.assemble`` reads them in.
    """

    def __init__(self, in_channels: int, k: int, hidden: int = 512) -> None:
        super().__init__()
        self.k = k
        self.transform = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.scores = nn.Conv2d(hidden, k * k, kernel_size=3, padding=1)
        init_new_layers(self)

    def forward(self, features: Tensor) -> Tensor:
        """[B, C, h, w] features → [B, k², h, w] score logits."""
        return self.scores(F.relu(self.transform(features)))


class ObjectnessBranch(nn.Module):
    """3×3 conv ``hidden`` + ReLU, then a 1×1 conv: one objectness logit per window position."""

    def __init__(self, in_channels: int, hidden: int = 512) -> None:
        super().__init__()
        self.transform = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.logit = nn.Conv2d(hidden, 1, kernel_size=1)
        init_new_layers(self)

    def forward(self, features: Tensor) -> Tensor:
        """[B, C, h, w] features → [B, 1, h, w] logits."""
        return self.logit(F.relu(self.transform(features)))


class DeepMaskHead(nn.Module):
    """~DeepMask mask head: per window, pooled features → fc ``hidden`` → fc mask_size² logits.

    A 1×1 conv ``hidden`` + ReLU transforms the whole feature map once; each window of m×m
    cells is then pooled to ``pooled``×``pooled`` (DeepMask's 14×14 map of a 224-px crop) by
    RoIAlign, flattened, and regressed to a ``mask_size``×``mask_size`` mask. Cells outside the
    feature map are zeros of the transformed features. The fc weights number
    hidden·pooled²·hidden + hidden·mask_size² (the paper's 53M), plus hidden + mask_size² biases.
    """

    def __init__(
        self,
        in_channels: int,
        m: int = 21,
        pooled: int = 14,
        hidden: int = 512,
        mask_size: int = 56,
    ) -> None:
        super().__init__()
        self.m, self.pooled, self.mask_size = m, pooled, mask_size
        self.transform = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.fc = nn.Linear(hidden * pooled * pooled, hidden)
        self.mask = nn.Linear(hidden, mask_size * mask_size)
        init_new_layers(self)

    def forward_windows(self, features: Tensor, batch_index: Tensor, tops: Tensor) -> Tensor:
        """Mask logits [N, mask_size, mask_size] of the windows with top-left cells ``tops``.

        ``features`` is the backbone's [B, C, h, w]; ``batch_index`` [N] picks each window's
        image and ``tops`` [N, 2] its top-left cell (y0, x0), which may lie outside the map.
        """
        hidden = F.relu(self.transform(features))
        n = tops.shape[0]
        if n == 0:
            return hidden.new_zeros((0, self.mask_size, self.mask_size))
        h, w = hidden.shape[-2:]
        tops = tops.to(device=hidden.device, dtype=torch.long)
        # RoIAlign clamps at the border; padding by one cell beyond every window (its bilinear
        # reach) makes the outside read as zeros.
        y_min, x_min = (tops.min(dim=0).values - 1).tolist()
        y_max, x_max = (tops.max(dim=0).values + self.m + 1).tolist()
        pad_top, pad_left = max(0, -y_min), max(0, -x_min)
        pad_bottom, pad_right = max(0, y_max - h), max(0, x_max - w)
        hidden = F.pad(hidden, (pad_left, pad_right, pad_top, pad_bottom))
        y0 = (tops[:, 0] + pad_top).to(hidden.dtype)
        x0 = (tops[:, 1] + pad_left).to(hidden.dtype)
        boxes = torch.stack([batch_index.to(hidden), x0, y0, x0 + self.m, y0 + self.m], dim=1)
        pooled = roi_align(hidden, boxes, output_size=self.pooled, spatial_scale=1.0, aligned=True)
        logits = self.mask(F.relu(self.fc(pooled.flatten(1))))
        return logits.view(n, self.mask_size, self.mask_size)
