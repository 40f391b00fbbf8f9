import pytest
import torch

from ifcn.config import validate_config
from ifcn.errors import IfcnError
from ifcn.model import InstanceFCN, build_model
from ifcn.model.heads import DeepMaskHead


def test_forward_gives_k2_scores_and_objectness_at_stride_8():
    model = build_model({"k": 3, "head_channels": 32})
    out = model(torch.randn(2, 3, 70, 45))
    assert out["features"].shape == (2, 96, 9, 6)
    assert out["scores"].shape == (2, 9, 9, 6)
    assert out["objectness"].shape == (2, 1, 9, 6)
    assert (model.k, model.m, model.stride, model.head) == (3, 21, 8, "instancefcn")


def test_deepmask_model_has_a_mask_head_and_no_score_maps():
    model = build_model({"head": "deepmask", "head_channels": 16, "m": 7})
    out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"features", "objectness"}
    assert isinstance(model.mask_head, DeepMaskHead) and not hasattr(model, "instance_branch")
    tops = torch.tensor([[-3, -3], [2, 1]])
    masks = model.mask_head.forward_windows(out["features"], torch.tensor([0, 0]), tops)
    assert masks.shape == (2, 56, 56)
    assert model.mask_head.m == 7


def test_build_model_reads_every_key_of_the_model_section():
    model = build_model(
        {
            "backbone": "resnet18",
            "pretrained": False,
            "weights": None,
            "head": "instancefcn",
            "k": 3,
            "m": 15,
            "head_channels": 24,
        }
    )
    assert model.backbone.out_channels == 512
    assert (model.k, model.m) == (3, 15)
    assert model.instance_branch.transform.out_channels == 24
    assert model.objectness_branch.transform.out_channels == 24


def test_build_model_defaults_are_the_schemas():
    model = build_model(validate_config({})["model"])
    reference = build_model({})
    assert (model.k, model.m, model.head) == (reference.k, reference.m, reference.head)
    assert (model.k, model.m, model.head) == (5, 21, "instancefcn")
    assert model.instance_branch.transform.out_channels == 512


def test_build_model_rejects_unknown_keys():
    with pytest.raises(IfcnError, match="unknown model config keys: depth"):
        build_model({"depth": 3})


def test_build_model_rejects_an_unknown_head():
    with pytest.raises(IfcnError, match="unknown head 'fcis'"):
        build_model({"head": "fcis"})
    with pytest.raises(IfcnError, match="unknown head 'fcis'"):
        InstanceFCN(build_model({}).backbone, head="fcis")


def test_build_model_refuses_pretrained_tiny():
    with pytest.raises(IfcnError, match="no ImageNet weights"):
        build_model({"pretrained": True})


@pytest.mark.parametrize("head", ["instancefcn", "deepmask"])
def test_gradients_reach_every_backbone_parameter(head):
    torch.manual_seed(0)
    model = build_model({"head": head, "head_channels": 16, "m": 5})
    out = model(torch.randn(1, 3, 48, 40))
    loss = out["objectness"].sum()
    if head == "instancefcn":
        loss = loss + out["scores"].square().sum()
    else:
        tops = torch.tensor([[0, 0], [1, -1]])
        masks = model.mask_head.forward_windows(out["features"], torch.tensor([0, 0]), tops)
        loss = loss + masks.square().sum()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name


def test_gradients_reach_the_first_resnet18_conv():
    model = build_model({"backbone": "resnet18", "k": 3, "head_channels": 8})
    model(torch.randn(1, 3, 32, 32))["scores"].sum().backward()
    assert torch.count_nonzero(model.backbone.conv1.weight.grad) > 0
