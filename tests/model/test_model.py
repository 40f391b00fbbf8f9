import pytest
import torch

from ifcn.config import validate_config
from ifcn.errors import IfcnError
from ifcn.model import InstanceFCN, build_model, check_model_config, parameter_groups
from ifcn.model.backbone import TinyBackbone
from ifcn.model.heads import DeepMaskHead, DeepMaskScoring, ObjectnessBranch
from ifcn.windows import STRIDE


def test_forward_gives_k2_scores_and_objectness_at_stride_8():
    model = build_model({"k": 3, "head_channels": 32})
    out = model(torch.randn(2, 3, 70, 45))
    assert out["features"].shape == (2, 96, 9, 6)
    assert out["scores"].shape == (2, 9, 9, 6)
    assert out["objectness"].shape == (2, 1, 9, 6)
    assert (model.k, model.m, model.stride, model.head) == (3, 21, STRIDE, "instancefcn")


def test_deepmask_model_has_a_mask_head_and_no_score_maps():
    model = build_model({"head": "deepmask", "head_channels": 16, "m": 7}).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"features", "objectness"}
    assert isinstance(model.mask_head, DeepMaskHead) and not hasattr(model, "instance_branch")
    assert isinstance(model.objectness_branch, DeepMaskScoring)
    tops = torch.tensor([[-3, -3], [2, 1]])
    masks = model.mask_head.forward_windows(out["features"], torch.tensor([0, 0]), tops)
    assert masks.shape == (2, 56, 56)
    assert model.mask_head.m == 7


def test_deepmask_scoring_fc_is_dense_in_eval_and_left_to_the_criterion_in_training():
    model = build_model({"head": "deepmask", "head_channels": 8, "m": 7})
    assert model.sparse_objectness
    assert "objectness" not in model.train()(torch.randn(1, 3, 40, 48))
    assert model.eval()(torch.randn(1, 3, 40, 48))["objectness"].shape == (1, 1, 5, 6)


def test_deepmask_scoring_conv_keeps_the_instancefcn_objectness_branch():
    model = build_model({"head": "deepmask", "deepmask_scoring": "conv", "m": 9})
    assert type(model.objectness_branch) is ObjectnessBranch and not model.sparse_objectness
    assert model.train()(torch.randn(1, 3, 40, 48))["objectness"].shape == (1, 1, 5, 6)
    instancefcn = build_model({"deepmask_scoring": "fc", "head_channels": 8})
    assert type(instancefcn.objectness_branch) is ObjectnessBranch


def test_a_window_smaller_than_k_is_refused_before_anything_is_built():
    """Issue 16 D7: m < k cannot hold k relative positions per side."""
    for build in (check_model_config, build_model):
        with pytest.raises(IfcnError, match="model.m = 3 is smaller than model.k = 5") as info:
            build({"k": 5, "m": 3})
        assert "\n" not in str(info.value)
    with pytest.raises(IfcnError, match="smaller than model.k"):
        InstanceFCN(TinyBackbone(8), k=5, m=4)
    assert check_model_config({"k": 5, "m": 5})["m"] == 5


@pytest.mark.parametrize("m", [9, 11, 20])
def test_deepmask_fc_scoring_takes_any_m_by_pooling_adaptively(m):
    """Issue 25: a run with model.m: 11 runs its ~DeepMask ablation (no multiple of 7 needed)."""
    cfg = check_model_config({"head": "deepmask", "m": m})
    model = build_model({**cfg, "head_channels": 8}).eval()
    assert isinstance(model.objectness_branch, DeepMaskScoring)
    assert model.objectness_branch.m == m
    assert model(torch.randn(1, 3, 40, 48))["objectness"].shape == (1, 1, 5, 6)
    with pytest.raises(IfcnError, match="unknown model.deepmask_scoring 'mlp'"):
        check_model_config({"deepmask_scoring": "mlp"})


def test_a_backbone_at_another_stride_is_refused():
    backbone = TinyBackbone(8)
    backbone.stride = 16
    with pytest.raises(IfcnError, match="stride 16.*STRIDE"):
        InstanceFCN(backbone)


def test_build_model_reads_every_key_of_the_model_section():
    model = build_model(
        {
            "backbone": "resnet18",
            "pretrained": False,
            "weights": None,
            "head": "instancefcn",
            "deepmask_scoring": "conv",
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
    model = build_model({"head": head, "head_channels": 16, "m": 7}).eval()
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


def test_parameter_groups_put_the_backbone_at_its_lr_multiple_and_leave_frozen_out():
    model = build_model({"head_channels": 8})
    model.backbone.stem.requires_grad_(False)
    (single,) = parameter_groups(model, 0.01)
    assert single["lr"] == 0.01
    assert len(single["params"]) == sum(p.requires_grad for p in model.parameters())
    new, backbone = parameter_groups(model, 0.01, backbone_lr_mult=0.1)
    assert (new["lr"], backbone["lr"]) == (0.01, pytest.approx(0.001))
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    assert {id(p) for p in backbone["params"]} == {id(p) for p in trainable}
    heads = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    assert {id(p) for p in new["params"]} == {id(p) for p in heads}
