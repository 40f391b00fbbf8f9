"""The instance assembling module of the paper (§3.1), the only place the assembling index lives.

A window of m×m feature cells whose top-left cell is (y0, x0) assembles an m×m instance: output
pixel (u, v) copies score map ``c = p(u)·k + p(v)`` at feature cell (y0 + u, x0 + v), where
``p`` splits 0..m-1 into k relative positions mirror-symmetrically (:func:`relative_positions`),
so a flipped image assembles the flipped instance. Cells outside the feature map read ``fill``.
There are no parameters.

Two implementations of the one definition: :func:`assemble_sparse` for a list of windows
(training, and inference after ranking by objectness) and :func:`assemble_dense` for every
window position (optionally strided). The dense one copies each of the k² blocks of the output
with one strided copy, so it writes m²·H·W values and never materialises k²·m² per position.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@functools.cache
def relative_positions(k: int, m: int) -> tuple[int, ...]:
    """p(u) for u = 0..m-1: the relative position (0..k-1) that row (or column) u belongs to.

    ``p(u) = floor((u + ½)·k/m)`` on the first half and its mirror ``k − 1 − p(m − 1 − u)`` on
    the second, so the blocks read the same from either end (4,4,5,4,4 for m = 21, k = 5).
    For odd k the mirror is the formula itself; for even k it keeps an even m symmetric where
    the formula lands on an integer (k = 4, m = 6: 1,2,2,1, not 1,2,1,2). The paper does not fix
    the rounding; the old ``floor(u·k/m)`` (5,4,4,4,4) made the centre block off-centre.
    """
    first = [(2 * u + 1) * k // (2 * m) for u in range((m + 1) // 2)]
    return tuple(first + [k - 1 - first[m - 1 - u] for u in range((m + 1) // 2, m)])


def assembling_index(k: int, m: int, device: torch.device | str | None = None) -> Tensor:
    """[m, m] long tensor: the score map each output pixel (u, v) of a window copies."""
    part = torch.tensor(relative_positions(k, m), device=device)
    return part[:, None] * k + part[None, :]


@functools.cache
def block_bounds(k: int, m: int) -> tuple[tuple[int, int], ...]:
    """[start, stop) of output rows (or columns) taken from relative position i = 0..k-1."""
    part = relative_positions(k, m)
    return tuple((sum(p < i for p in part), sum(p <= i for p in part)) for i in range(k))


def _pad(scores: Tensor, m: int, fill: float) -> Tensor:
    return F.pad(scores, (m, m, m, m), value=fill)


def assemble_sparse(
    scores: Tensor,
    tops: Tensor,
    m: int,
    batch_index: Tensor | None = None,
    fill: float = 0.0,
) -> Tensor:
    """Assemble the windows whose top-left cells are ``tops`` ([N, 2] as (y0, x0)).

    ``scores`` is [k², H, W] or [B, k², H, W] (then ``batch_index`` [N] picks the image of each
    window). Returns [N, m, m]; differentiable with respect to ``scores``.
    """
    if scores.dim() == 3:
        scores = scores[None]
    b, kk, _, _ = scores.shape
    k = int(round(kk**0.5))
    if k * k != kk:
        raise ValueError(f"number of score maps {kk} is not a square k²")
    tops = tops.to(device=scores.device, dtype=torch.long)
    if batch_index is None:
        batch_index = torch.zeros(len(tops), dtype=torch.long, device=scores.device)
    padded = _pad(scores, m, fill)
    offsets = torch.arange(m, device=scores.device)
    rows = tops[:, 0, None, None] + offsets[None, :, None] + m
    cols = tops[:, 1, None, None] + offsets[None, None, :] + m
    channel = assembling_index(k, m, scores.device)[None]
    return padded[batch_index.to(scores.device)[:, None, None], channel, rows, cols]


def dense_tops(height: int, width: int, m: int, stride: int = 1) -> Tensor:
    """Top-left cells of the windows centred on cells (i·stride, j·stride): [h', w', 2]."""
    ys = torch.arange(0, height, stride) - m // 2
    xs = torch.arange(0, width, stride) - m // 2
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


def assemble_dense(
    scores: Tensor, m: int, stride: int = 1, fill: float = 0.0, out: Tensor | None = None
) -> Tensor:
    """Assemble the window centred on every ``stride``-th feature cell of [k², H, W] score maps.

    Returns [h', w', m, m] with h' = ceil(H / stride): entry (a, b) is the window centred on
    cell (a·stride, b·stride), i.e. with top-left (a·stride − m//2, b·stride − m//2), equal to
    ``assemble_sparse`` of that window. The result is a view of an [m, m, h', w'] buffer: `out`
    if given (a fresh buffer of that size is zeroed by the kernel page by page, which costs
    about as much as the assembling itself), else a new one.
    """
    kk, height, width = scores.shape
    k = int(round(kk**0.5))
    if k * k != kk:
        raise ValueError(f"number of score maps {kk} is not a square k²")
    margin = m // 2 + 1  # the farthest a centred window reaches beyond the map, and a cell
    padded = F.pad(scores, (margin, margin, margin, margin), value=fill).contiguous()
    row_stride = padded.stride(1)
    out_h = (height + stride - 1) // stride
    out_w = (width + stride - 1) // stride
    shape = (m, m, out_h, out_w)
    if out is None:
        out = torch.empty(shape, dtype=scores.dtype, device=scores.device)
    elif out.shape != shape or out.dtype != scores.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {scores.dtype} tensor of shape {shape}")
    bounds = block_bounds(k, m)
    origin = margin - m // 2  # padded coordinate of the top-left cell of the first window
    # On the CPU NumPy's strided copy is ~25% faster than Tensor.copy_ for these row-sized runs
    on_host = padded.device.type == "cpu" and not padded.requires_grad
    maps, target = (padded.numpy(), out.numpy()) if on_host else (padded, out)
    item = padded.element_size() if on_host else 1  # NumPy strides and offsets count bytes
    plane = padded.stride(0)
    for i, (u0, u1) in enumerate(bounds):
        for j, (v0, v1) in enumerate(bounds):
            start = (i * k + j) * plane + (origin + u0) * row_stride + origin + v0
            shape = (u1 - u0, v1 - v0, out_h, out_w)
            strides = tuple(s * item for s in (row_stride, 1, stride * row_stride, stride))
            if on_host:
                source = np.ndarray(shape, maps.dtype, maps, start * item, strides)
                np.copyto(target[u0:u1, v0:v1], source)
            else:
                target[u0:u1, v0:v1].copy_(maps.as_strided(shape, strides, start))
    return out.permute(2, 3, 0, 1)
