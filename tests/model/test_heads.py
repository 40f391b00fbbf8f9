import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifcn.model.heads import (
    DeepMaskHead,
    DeepMaskScoring,
    InstanceBranch,
    ObjectnessBranch,
    adaptive_bins,
)


def _new_layers(module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_instance_branch_gives_k2_score_maps_at_feature_resolution():
    branch = InstanceBranch(16, k=3, hidden=32)
    assert branch(torch.randn(2, 16, 7, 5)).shape == (2, 9, 7, 5)


def test_objectness_branch_gives_one_logit_per_cell():
    branch = ObjectnessBranch(16, hidden=32)
    assert branch(torch.randn(2, 16, 7, 5)).shape == (2, 1, 7, 5)


@pytest.mark.parametrize("k", [3, 5])
def test_instance_branch_last_conv_has_hidden_9_k2_plus_k2_parameters(k):
    branch = InstanceBranch(96, k=k, hidden=512)
    count = sum(p.numel() for p in branch.scores.parameters())
    assert count == 512 * 3 * 3 * k * k + k * k
    if k == 5:
        assert round(count / 1e6, 1) == 0.1  # the paper's "0.1M"


def test_instance_branch_is_1x1_then_3x3():
    branch = InstanceBranch(96, k=5, hidden=64)
    assert [c.kernel_size for c in _new_layers(branch)] == [(1, 1), (3, 3)]


def test_objectness_branch_is_3x3_then_1x1():
    branch = ObjectnessBranch(96, hidden=64)
    assert [c.kernel_size for c in _new_layers(branch)] == [(3, 3), (1, 1)]


@pytest.mark.parametrize(
    "head",
    [
        lambda: InstanceBranch(96, k=5, hidden=512),
        lambda: ObjectnessBranch(96, hidden=512),
        lambda: DeepMaskHead(96, m=21, pooled=7, hidden=64, mask_size=24),
        lambda: DeepMaskScoring(16, m=21, hidden=256),
    ],
    ids=["instance", "objectness", "deepmask", "deepmask-scoring"],
)
def test_new_layers_are_gaussian_std_001_with_zero_bias(head):
    torch.manual_seed(0)
    for layer in _new_layers(head()):
        assert abs(layer.weight.std().item() - 0.01) < 0.001
        assert abs(layer.weight.mean().item()) < 0.001
        assert torch.count_nonzero(layer.bias) == 0


def test_deepmask_fc_parameters_match_the_papers_53m():
    head = DeepMaskHead(512, m=21, pooled=14, hidden=512, mask_size=56)
    weights = head.fc.weight.numel() + head.mask.weight.numel()
    biases = head.fc.bias.numel() + head.mask.bias.numel()
    assert weights == 512 * 14 * 14 * 512 + 512 * 56**2
    assert biases == 512 + 56**2
    assert round(weights / 1e6) == 53


@pytest.fixture
def small_head():
    torch.manual_seed(0)
    return DeepMaskHead(8, m=5, pooled=4, hidden=6, mask_size=8)


def test_deepmask_gives_a_mask_per_window(small_head):
    features = torch.randn(2, 8, 9, 10)
    tops = torch.tensor([[0, 0], [3, 4], [-2, 7]])
    masks = small_head.forward_windows(features, torch.tensor([0, 1, 1]), tops)
    assert masks.shape == (3, 8, 8)
    assert small_head.forward_windows(features, torch.zeros(0), torch.zeros(0, 2)).shape == (
        0,
        8,
        8,
    )


def test_deepmask_reads_zeros_outside_the_feature_map(small_head):
    features = torch.randn(1, 8, 6, 7)
    padded = F.pad(features, (6, 6, 6, 6))
    tops = torch.tensor([[-3, -2], [4, 5], [-1, 3], [0, 0]])
    zero = torch.zeros(4, dtype=torch.long)
    outside = small_head.forward_windows(features, zero, tops)
    inside = small_head.forward_windows(padded, zero, tops + 6)
    torch.testing.assert_close(outside, inside)


def test_deepmask_window_far_outside_sees_only_zeros(small_head):
    with torch.no_grad():
        for layer in (small_head.transform, small_head.fc, small_head.mask):
            layer.bias.normal_()
    features = torch.randn(1, 8, 6, 7)
    mask = small_head.forward_windows(features, torch.tensor([0]), torch.tensor([[20, -30]]))
    expected = small_head.mask(F.relu(small_head.fc.bias))
    torch.testing.assert_close(mask.flatten(), expected)


def test_deepmask_window_ignores_cells_beyond_its_bilinear_reach(small_head):
    features = torch.randn(1, 8, 12, 12)
    tops, first = torch.tensor([[3, 4]]), torch.tensor([0])
    before = small_head.forward_windows(features, first, tops)
    changed = features.clone()
    changed[..., :2, :] = changed[..., 9:, :] = 5.0
    changed[..., :, :3] = changed[..., :, 10:] = 5.0
    torch.testing.assert_close(small_head.forward_windows(changed, first, tops), before)
    changed[..., 5, 6] = 5.0
    assert not torch.allclose(small_head.forward_windows(changed, first, tops), before)


def test_deepmask_batch_index_picks_the_image(small_head):
    features = torch.randn(2, 8, 9, 10)
    tops = torch.tensor([[1, 2]])
    both = small_head.forward_windows(features, torch.tensor([1]), tops)
    alone = small_head.forward_windows(features[1:], torch.tensor([0]), tops)
    torch.testing.assert_close(both, alone)


def test_deepmask_scoring_is_2x2_pool_fc_hidden_fc_2hidden_fc_1_by_the_formula():
    scoring = DeepMaskScoring(512, m=21, hidden=512)
    shapes = [tuple(p.shape) for p in scoring.parameters()]
    assert shapes == [(512, 512 * 7 * 7), (512,), (1024, 512), (1024,), (1, 1024), (1,)]
    count = sum(p.numel() for p in scoring.parameters())
    assert count == 512 * 7 * 7 * 512 + 512 + 512 * 1024 + 1024 + 1024 + 1  # DeepMask's
    # 21 cells of 8 px: 7 blocks of 24 px side by side (DeepMask: 14 -> 7 of 32)
    assert scoring.bins == [(3 * i, 3) for i in range(7)]


@pytest.mark.parametrize("size", range(1, 30))
def test_adaptive_bins_are_torchs_adaptive_pooling_bins(size):
    torch.manual_seed(size)
    signal = torch.randn(1, 1, size)
    expected = F.adaptive_max_pool1d(signal, 7)[0, 0]
    bins = adaptive_bins(size, 7)
    maxima = torch.stack([signal[0, 0, start : start + n].max() for start, n in bins])
    torch.testing.assert_close(maxima, expected)
    assert all(n >= 1 and start + n <= size for start, n in bins)


def test_deepmask_scoring_drops_half_after_both_fc_layers_in_training_only():
    """DeepMask's scoring branch: "two fully connected layers (with ReLU non-linearities and
    dropout 0.5)"; inference (eval mode) is deterministic."""
    torch.manual_seed(0)
    scoring = DeepMaskScoring(4, m=11, hidden=256)
    with torch.no_grad():
        scoring.fc1.bias.fill_(1.0)  # every hidden unit active, so a zero is a dropped unit
        scoring.fc2.bias.fill_(1.0)
    seen = []
    for layer in (scoring.fc2, scoring.score):  # their inputs: fc1's and fc2's after dropout
        layer.register_forward_hook(lambda _, args, __: seen.append(args[0].detach().clone()))
    features = torch.randn(1, 4, 10, 12)
    tops, batch = torch.tensor([[0, 0], [-3, 2], [4, 5]]), torch.zeros(3, dtype=torch.long)

    scoring.eval()
    first = scoring.forward_windows(features, batch, tops)
    clean = list(seen)
    assert all((hidden > 0).all() for hidden in clean)
    torch.testing.assert_close(scoring.forward_windows(features, batch, tops), first)
    torch.testing.assert_close(scoring(features), scoring(features))

    seen.clear()
    scoring.train()
    trained = scoring.forward_windows(features, batch, tops)
    for dropped, kept in zip(seen, clean, strict=True):
        zero = dropped == 0
        assert 0.4 < zero.float().mean().item() < 0.6  # p = 0.5
        if dropped is seen[0]:  # fc1's units: the kept ones scaled by 1 / (1 - p)
            torch.testing.assert_close(dropped[~zero], 2 * kept[~zero])
    assert not torch.allclose(trained, first)
    assert not torch.allclose(scoring(features), scoring(features))


def _window_logit(scoring: DeepMaskScoring, features: Tensor, image: int, top) -> Tensor:
    """The fc layers on one window's crop: its m×m cells (zeros outside), adaptively max-pooled
    to 7×7 by torch."""
    m, pad = scoring.m, 64
    padded = F.pad(features[image], (pad, pad, pad, pad))
    y0, x0 = top[0] + pad, top[1] + pad
    crop = padded[:, y0 : y0 + m, x0 : x0 + m]
    pooled = F.adaptive_max_pool2d(crop[None], 7).flatten(1)
    hidden = F.relu(scoring.fc2(F.relu(scoring.fc1(pooled))))
    return scoring.score(hidden)[0, 0]


@pytest.mark.parametrize("m", [5, 7, 11, 14, 20, 21])
def test_sliding_fc_equals_the_fc_layers_on_each_windows_crop(m):
    """Any m: the window is pooled to 7×7 as adaptive max pooling does (7 | m: equal blocks)."""
    torch.manual_seed(m)
    scoring = DeepMaskScoring(6, m=m, hidden=5).eval()  # dropout off
    with torch.no_grad():
        for param in scoring.parameters():
            param.normal_()  # large weights and biases, so any misplaced cell shows
    features = torch.randn(2, 6, 9, 12)
    dense = scoring(features)
    assert dense.shape == (2, 1, 9, 12)
    for image in range(2):
        for y, x in [(0, 0), (4, 5), (8, 11), (2, 10)]:
            top = (y - m // 2, x - m // 2)  # the window centred on cell (y, x)
            expected = _window_logit(scoring, features, image, top)
            torch.testing.assert_close(dense[image, 0, y, x], expected, rtol=1e-4, atol=1e-4)
    tops = torch.tensor([[-5, 3], [0, 0], [6, -9], [20, 4]])  # any windows, off the map too
    batch = torch.tensor([1, 0, 1, 0])
    sparse = scoring.forward_windows(features, batch, tops)
    pairs = zip(batch.tolist(), tops.tolist(), strict=True)
    expected = torch.stack([_window_logit(scoring, features, b, t) for b, t in pairs])
    torch.testing.assert_close(sparse, expected, rtol=1e-4, atol=1e-4)
    assert scoring.forward_windows(features, torch.zeros(0), torch.zeros(0, 2)).shape == (0,)
