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


def adaptive_bins(size: int, grid: int) -> list[tuple[int, int]]:
    """(start, length) of each of ``grid`` bins over ``size`` cells, cut as torch's adaptive
    pooling cuts them: bin i spans [floor(i·size/grid), ceil((i+1)·size/grid))."""
    starts = [i * size // grid for i in range(grid)]
    ends = [-(-(i + 1) * size // grid) for i in range(grid)]
    return [(start, end - start) for start, end in zip(starts, ends, strict=True)]


class DeepMaskScoring(nn.Module):
    """DeepMask's scoring branch on each window: 2×2 max pool → fc ``hidden`` → fc 2·hidden → 1.

    DeepMask max-pools its 14×14 map of a 224-px crop 2×2 into 7×7 blocks of 32 px; here the
    window's m×m cells (m = 21: 168 px) are adaptively max-pooled into 7×7 blocks
    (``F.adaptive_max_pool2d``'s bins: m/7 cells, 24 px, when 7 divides m; overlapping bins of
    ⌈m/7⌉ or ⌈m/7⌉+1 cells otherwise, so any m works), flattened, and go through fc ``hidden``
    + ReLU + dropout 0.5, fc 2·hidden + ReLU + dropout 0.5 and fc 1 (DeepMask: 512, 1024, 1,
    "with ReLU non-linearities and dropout 0.5"; dropout acts in training mode only). Cells
    outside the feature map read zeros. ``forward`` applies the fc layers at every window
    position as a "sliding fc" (the paper's Table 2): each bin's max becomes a stride-1 max pool
    of the bin's size and fc1 a sum of 1×1 convolutions, one per bin, read at the bin's offset
    (for 7 | m, one 7×7 convolution dilated by m/7), so each block is pooled once for all the
    windows that contain it; it equals :meth:`forward_windows` on each window (tested), which
    training uses on its sampled windows only.
    """

    grid = 7  # DeepMask's 14×14 map after its 2×2 max pool
    dropout = 0.5  # DeepMask's, after both hidden fc layers

    def __init__(self, in_channels: int, m: int = 21, hidden: int = 512) -> None:
        super().__init__()
        self.m = m
        self.bins = adaptive_bins(m, self.grid)
        self.fc1 = nn.Linear(in_channels * self.grid * self.grid, hidden)
        self.fc2 = nn.Linear(hidden, 2 * hidden)
        self.score = nn.Linear(2 * hidden, 1)
        self.drop = nn.Dropout(self.dropout)
        init_new_layers(self)

    @property
    def uniform(self) -> bool:
        """Whether the bins are equal blocks side by side (7 divides m)."""
        return self.m % self.grid == 0

    def _bin_maxima(self, padded: Tensor) -> dict[tuple[int, int], Tensor]:
        """Stride-1 max pools of ``padded`` for every (rows, cols) bin size: the max of the bin
        whose top-left cell is (y, x) is the pool's entry (y, x)."""
        sizes = sorted({length for _, length in self.bins})
        return {
            (rows, cols): F.max_pool2d(padded, (rows, cols), stride=1)
            for rows in sizes
            for cols in sizes
        }

    def forward(self, features: Tensor) -> Tensor:
        """[B, C, h, w] features → [B, 1, h, w]: the logit of the window centred on each cell."""
        before, after = self.m // 2, self.m - 1 - self.m // 2
        padded = F.pad(features, (before, after, before, after))
        weight = self.fc1.weight.view(self.fc1.out_features, -1, self.grid, self.grid)
        if self.uniform:
            block = self.m // self.grid
            blocks = F.max_pool2d(padded, block, stride=1)
            hidden = F.conv2d(blocks, weight, self.fc1.bias, dilation=block)
        else:
            h, w = features.shape[-2:]
            maxima = self._bin_maxima(padded)
            hidden = self.fc1.bias[None, :, None, None]
            for i, (y0, rows) in enumerate(self.bins):
                for j, (x0, cols) in enumerate(self.bins):
                    cells = maxima[rows, cols][..., y0 : y0 + h, x0 : x0 + w]
                    hidden = hidden + F.conv2d(cells, weight[:, :, i : i + 1, j : j + 1])
        hidden = self.drop(F.relu(hidden))
        hidden = F.conv2d(hidden, self.fc2.weight[:, :, None, None], self.fc2.bias)
        hidden = self.drop(F.relu(hidden))
        return F.conv2d(hidden, self.score.weight[:, :, None, None], self.score.bias)

    def forward_windows(self, features: Tensor, batch_index: Tensor, tops: Tensor) -> Tensor:
        """Logits [N] of the windows with top-left cells ``tops`` [N, 2] in images ``batch_index``.

        The windows' 7×7 bin maxima are read off stride-1 max pools of the map (one per bin
        size), so no window's m×m cells are copied.
        """
        tops = tops.to(device=features.device, dtype=torch.long).reshape(-1, 2)
        if not len(tops):
            return features.new_zeros(0)
        y_min, x_min = tops.min(dim=0).values.tolist()
        y_max, x_max = (tops.max(dim=0).values + self.m).tolist()
        h, w = features.shape[-2:]
        top, left = max(0, -y_min), max(0, -x_min)
        padded = F.pad(features, (left, max(0, x_max - w), top, max(0, y_max - h)))
        maxima = self._bin_maxima(padded)
        images = batch_index.to(device=features.device, dtype=torch.long)
        rows, cols = tops[:, 0] + top, tops[:, 1] + left
        pooled = torch.stack(
            [
                torch.stack(
                    [maxima[ny, nx][images, :, rows + y0, cols + x0] for x0, nx in self.bins],
                    dim=-1,
                )
                for y0, ny in self.bins
            ],
            dim=-2,
        )  # [N, C, grid, grid]
        hidden = self.drop(F.relu(self.fc1(pooled.flatten(1))))
        return self.score(self.drop(F.relu(self.fc2(hidden))))[:, 0]
