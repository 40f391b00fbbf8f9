"""The assembling module (paper §3.1, DESIGN §4): a mirror-symmetric split; sparse == dense."""

import math

import pytest
import torch

from ifcn.assemble import (
    assemble_dense,
    assemble_sparse,
    assembling_index,
    block_bounds,
    dense_tops,
    relative_positions,
)


def _index(u: int, v: int, k: int, m: int) -> int:
    """The definition written out: relative position (row, col) of pixel (u, v) on a k×k grid."""
    part = relative_positions(k, m)
    return part[u] * k + part[v]


SYMMETRIC = [(k, m) for k in range(1, 8, 2) for m in range(9, 22)] + [
    (k, m) for k in (2, 4, 6) for m in range(10, 22, 2)
]


@pytest.mark.parametrize("k,m", SYMMETRIC)
def test_split_is_mirror_symmetric_contiguous_and_covers_every_position(k, m):
    part = list(relative_positions(k, m))
    assert [k - 1 - p for p in reversed(part)] == part
    assert part == sorted(part) and set(part) == set(range(k))
    sizes = [stop - start for start, stop in block_bounds(k, m)]
    assert sizes == sizes[::-1] and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("k,m", SYMMETRIC)
def test_split_is_the_half_pixel_formula_where_that_is_symmetric(k, m):
    formula = [math.floor((u + 0.5) * k / m) for u in range(m)]
    if k % 2:  # (u + ½)·k/m never lands on an integer: the formula is symmetric by itself
        assert list(relative_positions(k, m)) == formula
    else:  # the mirror takes over only where the formula lands on an integer
        exact = [(2 * u + 1) * k % (2 * m) == 0 for u in range(m)]
        for u, (p, f) in enumerate(zip(relative_positions(k, m), formula, strict=True)):
            assert p == f or exact[m - 1 - u]


def test_index_k5_m21_centre_block_is_the_large_one():
    index = assembling_index(5, 21)
    assert index[:, 0].tolist() == [0] * 4 + [5] * 4 + [10] * 5 + [15] * 4 + [20] * 4
    assert index[0].tolist() == [0] * 4 + [1] * 4 + [2] * 5 + [3] * 4 + [4] * 4
    assert list(block_bounds(5, 21)) == [(0, 4), (4, 8), (8, 13), (13, 17), (17, 21)]
    assert index[10, 10] == 12  # the window's centre pixel reads the centre map


def test_index_k3_m21_integer_blocks():
    assert list(block_bounds(3, 21)) == [(0, 7), (7, 14), (14, 21)]
    assert assembling_index(3, 21)[20, 20] == 8  # bottom-right cell copies the last map


def test_even_k_even_m_where_the_plain_formula_is_lopsided():
    # floor((u + ½)·4/6) gives 0,1,1,2,3,3
    assert list(relative_positions(4, 6)) == [0, 1, 1, 2, 2, 3]


def _mirror(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The score maps of the horizontally flipped image: each map flipped, and the map of
    relative position (i, j) becoming that of (i, k − 1 − j)."""
    flipped = scores.flip(-1).reshape(k, k, *scores.shape[1:])
    return flipped.flip(1).reshape(scores.shape)


@pytest.mark.parametrize("k,m", SYMMETRIC)
def test_flipped_score_maps_assemble_the_flipped_window(k, m):
    torch.manual_seed(k * 100 + m)
    h, w = 17, 26
    scores = torch.randn(k * k, h, w)
    tops = torch.tensor([[0, 0], [3, 5], [-4, 9], [6, -7], [-m + 2, w - 3], [h - 2, w - m + 4]])
    flipped_tops = torch.stack([tops[:, 0], w - m - tops[:, 1]], dim=1)
    out = assemble_sparse(scores, tops, m, fill=-5.0)
    mirrored = assemble_sparse(_mirror(scores, k), flipped_tops, m, fill=-5.0)
    assert torch.equal(mirrored, out.flip(-1))


@pytest.mark.parametrize("k,m", [(k, m) for k, m in SYMMETRIC if m % 2 and m in (9, 15, 21)])
def test_flipped_score_maps_assemble_dense_windows_flipped(k, m):
    torch.manual_seed(k + m)
    scores = torch.randn(k * k, 13, 19)
    dense = assemble_dense(scores, m, fill=-2.0)
    mirrored = assemble_dense(_mirror(scores, k), m, fill=-2.0)  # centred on cell (y, w − 1 − x)
    assert torch.equal(mirrored, dense.flip(1).flip(-1))


@pytest.mark.parametrize("k", [3, 5])
def test_sparse_copies_the_right_cell(k):
    m, h, w = 21, 30, 27
    scores = torch.randn(k * k, h, w)
    tops = torch.tensor([[4, 3], [-5, 10], [20, -8], [0, 0]])
    out = assemble_sparse(scores, tops, m, fill=-7.0)
    for n, (y0, x0) in enumerate(tops.tolist()):
        for u in range(0, m, 4):
            for v in range(0, m, 3):
                y, x = y0 + u, x0 + v
                inside = 0 <= y < h and 0 <= x < w
                expected = scores[_index(u, v, k, m), y, x] if inside else -7.0
                assert out[n, u, v] == expected


@pytest.mark.parametrize(
    "k,m,stride", [(5, 21, 1), (3, 21, 1), (5, 21, 2), (3, 9, 3), (1, 21, 1), (4, 6, 1), (4, 20, 2)]
)
def test_sparse_equals_dense_on_random_maps(k, m, stride):
    torch.manual_seed(k * 100 + stride)
    scores = torch.randn(k * k, 23, 31)
    dense = assemble_dense(scores, m, stride=stride, fill=-3.0)
    tops = dense_tops(23, 31, m, stride)
    assert (
        dense.shape[:2]
        == tops.shape[:2]
        == ((23 + stride - 1) // stride, (31 + stride - 1) // stride)
    )
    sparse = assemble_sparse(scores, tops.reshape(-1, 2), m, fill=-3.0)
    assert torch.equal(dense.reshape(-1, m, m), sparse)


def test_dense_window_is_centred_on_its_cell():
    m = 21
    scores = torch.zeros(25, 12, 12)
    scores[:, 5, 7] = 1.0
    dense = assemble_dense(scores, m)
    # the window centred on cell (5, 7) sees that cell at its centre pixel (10, 10)
    assert dense[5, 7, m // 2, m // 2] == 1.0
    assert dense[5, 7].sum() == 1.0


def test_sparse_batch_index_and_gradient():
    scores = torch.randn(2, 9, 10, 10, requires_grad=True)
    tops = torch.tensor([[0, 0], [1, 2]])
    out = assemble_sparse(scores, tops, 6, batch_index=torch.tensor([1, 0]))
    assert torch.equal(out[0], assemble_sparse(scores[1], tops[:1], 6)[0])
    out.sum().backward()
    assert scores.grad[0].sum() == 36 and scores.grad[1].sum() == 36


def test_dense_memory_is_m2_hw():
    out = assemble_dense(torch.randn(25, 40, 50), 21)
    assert out.untyped_storage().nbytes() == 21 * 21 * 40 * 50 * 4


def test_dense_into_a_given_buffer_equals_a_fresh_one():
    scores = torch.randn(9, 13, 17)
    buffer = torch.full((7, 7, 13, 17), 5.0)
    out = assemble_dense(scores, 7, fill=-1.0, out=buffer)
    assert out.data_ptr() == buffer.data_ptr()
    assert torch.equal(out, assemble_dense(scores, 7, fill=-1.0))
    with pytest.raises(ValueError, match="contiguous"):
        assemble_dense(scores, 7, out=torch.empty(7, 7, 13, 16))


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_gives_the_same_through_numpy_and_through_torch(stride):
    scores = torch.randn(25, 19, 23)
    tracked = scores.clone().requires_grad_(True)  # the Tensor.copy_ path (as on a GPU)
    with torch.no_grad():
        expected = assemble_dense(scores, 21, stride, fill=-1.0)
    assert torch.equal(assemble_dense(tracked, 21, stride, fill=-1.0).detach(), expected)
