import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg
from torchvision.ops.misc import FrozenBatchNorm2d

from ifcn.errors import IfcnError
from ifcn.model.backbone import build_backbone, imagenet_weight_paths, shift_up_left
from ifcn.windows import STRIDE

SIZES = {
    "tiny": [(64, 64), (57, 43), (100, 33), (17, 9)],
    "vgg16": [(32, 32), (27, 19), (9, 17)],
    "resnet18": [(64, 64), (57, 43), (9, 17)],
    "resnet50": [(32, 32), (25, 17)],
    "efficientnet_lite0": [(64, 64), (57, 43), (100, 33), (9, 17)],
}
CASES = [(name, size) for name, sizes in SIZES.items() for size in sizes]


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {name: build_backbone(name).eval() for name in SIZES}


@pytest.mark.parametrize("name,size", CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_feature_map_is_ceil_of_input_over_8(backbones, name, size):
    h, w = size
    with torch.no_grad():
        out = backbones[name](torch.randn(1, 3, h, w))
    assert out.shape == (1, backbones[name].out_channels, math.ceil(h / 8), math.ceil(w / 8))


def test_out_channels(backbones):
    assert {n: b.out_channels for n, b in backbones.items()} == {
        "tiny": 96,
        "vgg16": 512,
        "resnet18": 512,
        "resnet50": 2048,
        "efficientnet_lite0": 152,
    }


def test_vgg16_has_13_convs_pool4_3x3_stride_1_and_conv5_dilated_by_2(backbones):
    layers = list(backbones["vgg16"].features)
    convs = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    assert len(convs) == 13
    assert [c.dilation for c in convs] == [(1, 1)] * 10 + [(2, 2)] * 3
    assert [c.padding for c in convs] == [(1, 1)] * 10 + [(2, 2)] * 3
    pools = [m for m in backbones["vgg16"].modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(2, 2, 0)] * 3 + [(3, 1, 1)]
    assert isinstance(layers[-1], nn.ReLU)


def test_vgg16_computes_conv5_of_a_3x3_pool4_vgg_densely(backbones):
    backbone = backbones["vgg16"]
    layers = list(tv_vgg.make_layers(tv_vgg.cfgs["D"]))[:30]
    layers[23] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    reference = nn.Sequential(*layers).eval()
    reference.load_state_dict(backbone.features.state_dict())
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        dense, strided = backbone(x), reference(x)
    assert strided.shape[-2:] == (2, 3)
    torch.testing.assert_close(dense[..., ::2, ::2], strided, rtol=1e-4, atol=1e-4)


def _three_by_three(layer):
    return [c for c in layer.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]


def test_resnet18_layer3_and_layer4_run_at_stride_1_dilated_2_and_4(backbones):
    net = backbones["resnet18"]
    for layer, before, after in ((net.layer3, 1, 2), (net.layer4, 2, 4)):
        assert all(c.stride == (1, 1) for c in layer.modules() if isinstance(c, nn.Conv2d))
        convs = _three_by_three(layer)
        assert [c.dilation[0] for c in convs] == [before, after, after, after]
        assert all(c.padding == c.dilation for c in convs)


def test_resnet18_computes_the_undilated_layer4_densely(backbones):
    backbone = backbones["resnet18"]
    reference = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d).eval()
    reference.load_state_dict(backbone.state_dict(), strict=False)
    stem = nn.Sequential(*list(reference.children())[:5])
    rest = nn.Sequential(*list(reference.children())[5:-2])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        dense, strided = backbone(x), rest(shift_up_left(stem(x)))
    assert strided.shape[-2:] == (2, 2)
    torch.testing.assert_close(dense[..., ::4, ::4], strided, rtol=1e-4, atol=1e-4)


def test_resnet50_is_dilated_in_layer3_and_layer4(backbones):
    net = backbones["resnet50"]
    assert [c.dilation[0] for c in _three_by_three(net.layer3)] == [1] + [2] * 5
    assert [c.dilation[0] for c in _three_by_three(net.layer4)] == [2, 4, 4]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets_use_frozen_batchnorm(backbones, name):
    modules = list(backbones[name].modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in modules) > 0


def _equal_taps(module: nn.Module) -> nn.Module:
    """The backbone with every tap weighted alike: its input gradient is its footprint.

    Random or trained kernels are lopsided, which moves a cell's gradient centroid by a few
    pixels from one draw to the next; with equal taps only padding, pooling and strides can.
    A max pool sends its gradient to each element of its window equally often on random
    input, so it reads as the mean of that window; GroupNorm's statistics span the image.
    ReLU6 becomes ReLU: residual sums of equal taps grow past 6, where ReLU6 passes no gradient.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU6):
            setattr(module, name, nn.ReLU())
        elif isinstance(child, nn.MaxPool2d):
            pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
            setattr(module, name, pool)
        elif isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.Conv2d):
            nn.init.constant_(child.weight, 1.0 / child.weight[0].numel())
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        else:
            _equal_taps(child)
    return module.requires_grad_(False)


@pytest.mark.parametrize("name", list(SIZES))
def test_feature_cell_is_centred_where_the_window_geometry_puts_it(name):
    """DESIGN §5: cell (y, x) is centred on pixel (8y + 3.5, 8x + 3.5), within 1 px.

    The cell in the middle of an 88-px image (n = 11 cells, an odd number) is measured, so the
    image border cuts its footprint alike on both sides. Before the fix this read +2.3 px for
    vgg16 (a one-sided pool4) and about -3 px for the others (3×3/s2 convs centre on 2i).
    """
    cells = 11
    backbone = _equal_taps(build_backbone(name).eval())
    image = torch.ones(1, 3, cells * STRIDE, cells * STRIDE, requires_grad=True)
    middle = cells // 2
    backbone(image)[0, :, middle, middle].sum().backward()
    footprint = image.grad[0].abs().sum(0).double()
    pixels = torch.arange(cells * STRIDE, dtype=torch.float64)
    centre_y = float((footprint.sum(1) * pixels).sum() / footprint.sum())
    centre_x = float((footprint.sum(0) * pixels).sum() / footprint.sum())
    expected = STRIDE * middle + (STRIDE - 1) / 2
    assert abs(centre_y - expected) <= 1.0 and abs(centre_x - expected) <= 1.0, (
        centre_y - expected,
        centre_x - expected,
    )


def test_shift_up_left_moves_the_map_one_cell_and_keeps_its_size():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    shifted = shift_up_left(x)
    assert shifted.shape == x.shape
    torch.testing.assert_close(shifted[0, 0, :2, :3], x[0, 0, 1:, 1:])
    assert not shifted[0, 0, 2].any() and not shifted[0, 0, :, 3].any()


def test_tiny_receptive_field_covers_a_21_cell_window(backbones):
    backbone = build_backbone("tiny")
    backbone.load_state_dict(backbones["tiny"].state_dict())
    x = torch.randn(1, 3, 336, 336, requires_grad=True)
    out = backbone(x)
    out[0, :, 21, 21].sum().backward()
    seen = x.grad[0].abs().sum(dim=(0, 2)).nonzero()
    assert int(seen.max() - seen.min()) + 1 >= 21 * 8


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(state, path)
    return path, state


def test_pretrained_loads_a_torchvision_state_dict_file(resnet18_state):
    path, state = resnet18_state
    backbone = build_backbone("resnet18", pretrained=True, weights=str(path))
    loaded = backbone.state_dict()
    assert "fc.weight" not in loaded
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_pretrained_vgg16_takes_the_features_and_ignores_the_classifier(tmp_path):
    torch.manual_seed(2)
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "vgg16.pth")
    backbone = build_backbone("vgg16", pretrained=True, weights=str(tmp_path / "vgg16.pth"))
    assert backbone.state_dict().keys() == state.keys() - {"classifier.0.weight"}
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_pretrained_reads_torchvision_hub_cache(resnet18_state, tmp_path, monkeypatch):
    path, state = resnet18_state
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = imagenet_weight_paths("resnet18")[0]
    assert cached == tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir()
    cached.symlink_to(path)
    backbone = build_backbone("resnet18", pretrained=True)
    torch.testing.assert_close(backbone.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


def test_pretrained_without_weights_is_an_error_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(IfcnError, match="pretrained weights for vgg16 not found") as err:
        build_backbone("vgg16", pretrained=True)
    message = str(err.value)
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in message
    assert "model.pretrained: false" in message and "\n" not in message


def test_pretrained_with_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(IfcnError, match="not found") as err:
        build_backbone("resnet18", pretrained=True, weights=str(tmp_path / "nope.pth"))
    assert err.value.path == tmp_path / "nope.pth"


def test_pretrained_with_another_networks_weights_is_an_error(resnet18_state):
    path, _ = resnet18_state
    with pytest.raises(IfcnError, match="not a torchvision resnet50 state dict"):
        build_backbone("resnet50", pretrained=True, weights=str(path))


def test_pretrained_with_a_corrupt_file_is_an_error(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(IfcnError, match="cannot read pretrained weights"):
        build_backbone("resnet18", pretrained=True, weights=str(tmp_path / "bad.pth"))


def test_tiny_has_no_imagenet_weights():
    with pytest.raises(IfcnError, match="tiny has no ImageNet weights"):
        build_backbone("tiny", pretrained=True)


def test_unknown_backbone_is_an_error():
    with pytest.raises(IfcnError, match="unknown backbone 'vgg19'"):
        build_backbone("vgg19")
