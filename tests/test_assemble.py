"""The assembling module pinned to the paper (§3.1) and DESIGN §4."""

import math

import pytest
import torch

from ifcn.assemble import (
    assemble_dense,
    assemble_sparse,
    assembling_index,
    block_bounds,
    dense_tops,
)


def _paper_index(u: int, v: int, k: int, m: int) -> int:
    """The definition written out: relative position (row, col) of pixel (u, v) on a k×k grid."""
    return math.floor(u * k / m) * k + math.floor(v * k / m)


@pytest.mark.parametrize("k,m", [(3, 21), (5, 21), (7, 21), (1, 21), (5, 10), (3, 9)])
def test_index_matches_paper(k, m):
    index = assembling_index(k, m)
    assert index.shape == (m, m)
    for u in range(m):
        for v in range(m):
            assert index[u, v] == _paper_index(u, v, k, m)


def test_index_k5_m21_non_integer_blocks():
    # m/k = 4.2: the first relative position takes 5 rows, the others 4 (floor(u*5/21)).
    index = assembling_index(5, 21)
    assert index[:, 0].tolist() == [0] * 5 + [5] * 4 + [10] * 4 + [15] * 4 + [20] * 4
    assert index[0].tolist() == [0] * 5 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert block_bounds(5, 21) == [(0, 5), (5, 9), (9, 13), (13, 17), (17, 21)]


def test_index_k3_m21_integer_blocks():
    assert block_bounds(3, 21) == [(0, 7), (7, 14), (14, 21)]
    assert assembling_index(3, 21)[20, 20] == 8  # bottom-right cell copies the last map


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
                expected = scores[_paper_index(u, v, k, m), y, x] if inside else -7.0
                assert out[n, u, v] == expected


@pytest.mark.parametrize("k,m,stride", [(5, 21, 1), (3, 21, 1), (5, 21, 2), (3, 9, 3), (1, 21, 1)])
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
