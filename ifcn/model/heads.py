"""The branches on top of the stride-8 features (paper §3.3, Fig. 4) and the ~DeepMask head.

InstanceFCN's mask layers are independent of the mask resolution m: the instance branch
outputs k² score maps that the assembling module (``ifcn.assemble``) copies into m×m windows.
The ~DeepMask baseline (paper Table 2) regresses each window's mask with fc layers instead, so
its parameters grow with the mask side, and scores each window with DeepMask's fc scoring
branch (:class:`DeepMaskScoring`) unless ``model.deepmask_scoring`` asks for InstanceFCN's conv
objectness branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ifcn.errors import IfcnError


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


class DeepMaskScoring(nn.Module):
    """DeepMask's scoring branch on each window: 2×2 max pool → fc ``hidden`` → fc 2·hidden → 1.

    DeepMask max-pools its 14×14 map of a 224-px crop 2×2 into 7×7 blocks of 32 px; here the
    window's m×m cells (m = 21: 168 px) are max-pooled into 7×7 blocks of m/7 cells (24 px),
    flattened, and go through fc ``hidden`` + ReLU, fc 2·hidden + ReLU and fc 1 (DeepMask:
    512, 1024, 1). Cells outside the feature map read zeros. ``forward`` applies the fc layers
    at every window position as a "sliding fc" (the paper's Table 2): the block max becomes a
    stride-1 max pool and fc1 a 7×7 convolution dilated by m/7, so each block is pooled once
    for all the windows that contain it; it equals :meth:`forward_windows` on each window
    (tested), which training uses on its sampled windows only.
    """

    grid = 7  # DeepMask's 14×14 map after its 2×2 max pool

    def __init__(self, in_channels: int, m: int = 21, hidden: int = 512) -> None:
        super().__init__()
        self.check_window(m)
        self.m, self.block = m, m // self.grid
        self.fc1 = nn.Linear(in_channels * self.grid * self.grid, hidden)
        self.fc2 = nn.Linear(hidden, 2 * hidden)
        self.score = nn.Linear(2 * hidden, 1)
        init_new_layers(self)

    @classmethod
    def check_window(cls, m: int) -> None:
        """IfcnError unless a window of m cells splits into grid×grid blocks."""
        if m % cls.grid:
            raise IfcnError(
                f"model.m = {m}: DeepMask's scoring branch pools the window into "
                f"{cls.grid}x{cls.grid} blocks, so m must be a multiple of {cls.grid} "
                "(or set model.deepmask_scoring: conv)"
            )

    def forward(self, features: Tensor) -> Tensor:
        """[B, C, h, w] features → [B, 1, h, w]: the logit of the window centred on each cell."""
        before, after = self.m // 2, self.m - 1 - self.m // 2
        padded = F.pad(features, (before, after, before, after))
        blocks = F.max_pool2d(padded, self.block, stride=1)
        weight = self.fc1.weight.view(self.fc1.out_features, -1, self.grid, self.grid)
        hidden = F.relu(F.conv2d(blocks, weight, self.fc1.bias, dilation=self.block))
        hidden = F.relu(F.conv2d(hidden, self.fc2.weight[:, :, None, None], self.fc2.bias))
        return F.conv2d(hidden, self.score.weight[:, :, None, None], self.score.bias)

    def forward_windows(self, features: Tensor, batch_index: Tensor, tops: Tensor) -> Tensor:
        """Logits [N] of the windows with top-left cells ``tops`` [N, 2] in images ``batch_index``.

        The windows' 7×7 block maxima are read off one stride-1 block max pool of the map, so no
        window's m×m cells are copied.
        """
        tops = tops.to(device=features.device, dtype=torch.long).reshape(-1, 2)
        if not len(tops):
            return features.new_zeros(0)
        y_min, x_min = tops.min(dim=0).values.tolist()
        y_max, x_max = (tops.max(dim=0).values + self.m).tolist()
        h, w = features.shape[-2:]
        top, left = max(0, -y_min), max(0, -x_min)
        padded = F.pad(features, (left, max(0, x_max - w), top, max(0, y_max - h)))
        blocks = F.max_pool2d(padded, self.block, stride=1)
        offsets = torch.arange(self.grid, device=features.device) * self.block
        rows = (tops[:, 0] + top)[:, None, None] + offsets[None, :, None]
        cols = (tops[:, 1] + left)[:, None, None] + offsets[None, None, :]
        images = batch_index.to(device=features.device, dtype=torch.long)[:, None, None]
        pooled = blocks[images, :, rows, cols].permute(0, 3, 1, 2)  # indexing puts C last
        return self.score(F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1))))))[:, 0]
