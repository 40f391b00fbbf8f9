import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifcn.errors import IfcnError
from ifcn.model.heads import DeepMaskHead, DeepMaskScoring, InstanceBranch, ObjectnessBranch


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
    assert scoring.block == 3  # 21 cells of 8 px: 7 blocks of 24 px (DeepMask: 14 -> 7 of 32)


def test_deepmask_scoring_needs_a_window_of_7_blocks():
    with pytest.raises(IfcnError, match="m = 20.*multiple of 7.*deepmask_scoring: conv"):
        DeepMaskScoring(8, m=20)


def _window_logit(scoring: DeepMaskScoring, features: Tensor, image: int, top) -> Tensor:
    """The fc layers on one window's crop: its m×m cells (zeros outside), 7×7 block maxima."""
    m, pad = scoring.m, 64
    padded = F.pad(features[image], (pad, pad, pad, pad))
    y0, x0 = top[0] + pad, top[1] + pad
    crop = padded[:, y0 : y0 + m, x0 : x0 + m]
    pooled = F.max_pool2d(crop[None], scoring.block).flatten(1)
    hidden = F.relu(scoring.fc2(F.relu(scoring.fc1(pooled))))
    return scoring.score(hidden)[0, 0]


@pytest.mark.parametrize("m", [7, 14, 21])
def test_sliding_fc_equals_the_fc_layers_on_each_windows_crop(m):
    torch.manual_seed(m)
    scoring = DeepMaskScoring(6, m=m, hidden=5)
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
