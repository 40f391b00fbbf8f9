"""The classifier network: MNC's stage 3 on top of segment proposals (paper §4, DESIGN §9).

Per proposal, the backbone's stride-8 features are pooled on its box with RoIAlign into a
2P×2P grid and max-pooled 2×2 to P×P (the box path; MNC's "RoI warping" to 14×14 then max
pooling to VGG's 7×7 pool5); the 2P×2P grid multiplied by the proposal's binary mask resized
to it, then max-pooled alike, is the segment path ("RoI masking": features outside the
segment are zeroed). Each path goes through two fc layers (MNC: VGG-16's fc6/fc7, 4096-d,
initialised from ImageNet), the two are concatenated and a linear layer gives C+1 logits
(index 0 = background). Proposals arrive as RLE masks and boxes in original-image pixels;
`roi_inputs` turns them into what the network reads, for training and prediction alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor, nn
from torchvision.ops import roi_align

from ifcn.classify.settings import mask_grid_size
from ifcn.errors import IfcnError
from ifcn.model.backbone import build_backbone, find_pretrained_weights
from ifcn.model.heads import init_new_layers
from ifcn.training import checkpoint
from ifcn.windows import STRIDE

KIND = checkpoint.CLASSIFIER  # the `kind` entry of the classifier's checkpoints
_DECODE_CHUNK = 64  # masks decoded at once at full image size
_MARGIN = 2  # pixels around a box that bilinear sampling may read
# torchvision's VGG-16 classifier: fc6 (25088 = 512·7·7 → 4096) and fc7 (4096 → 4096)
_VGG16_FC = {"1": "classifier.0", "3": "classifier.3"}


def mask_grids(rles: Sequence[dict], boxes: np.ndarray, size: int) -> Tensor:
    """Binary masks [n, size, size] float: each mask resized to its box's RoIAlign grid.

    The mask is sampled with RoIAlign on the same box (aligned, one sample per pixel), so each
    cell holds the fraction of its bin that the segment covers; cells at least half covered
    are 1. Boxes are (x0, y0, x1, y1) in the masks' pixels, x1 and y1 exclusive.
    """
    out = torch.zeros(len(rles), size, size)
    for start in range(0, len(rles), _DECODE_CHUNK):
        chunk = list(rles[start : start + _DECODE_CHUNK])
        if not chunk:
            continue
        masks = mask_utils.decode(chunk)
        height, width = masks.shape[:2]
        for j in range(masks.shape[2]):
            x0, y0, x1, y1 = (float(v) for v in boxes[start + j])
            left = int(min(max(np.floor(x0) - _MARGIN, 0), width))
            top = int(min(max(np.floor(y0) - _MARGIN, 0), height))
            right = int(min(max(np.ceil(x1) + _MARGIN, left + 1), width))
            bottom = int(min(max(np.ceil(y1) + _MARGIN, top + 1), height))
            crop = torch.from_numpy(np.ascontiguousarray(masks[top:bottom, left:right, j]))
            if crop.numel() == 0:
                continue
            box = torch.tensor([[0.0, x0 - left, y0 - top, x1 - left, y1 - top]])
            cover = roi_align(crop[None, None].float(), box, size, 1.0, 0, aligned=True)
            out[start + j] = (cover[0, 0] >= 0.5).float()
    return out


def roi_inputs(
    rles: Sequence[dict], boxes: np.ndarray, scale: float, width: int, flipped: bool, size: int
) -> tuple[Tensor, Tensor]:
    """RoIs [n, 5] (batch index 0, box in resized-image pixels) and mask grids [n, size, size].

    `boxes` are in original-image pixels; the image was resized by `scale` to `width` pixels
    and then mirrored if `flipped` (the mirrored grid is the grid of the mirrored box).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    grids = mask_grids(rles, boxes, size)
    scaled = torch.from_numpy(boxes * np.float32(scale))
    if flipped:
        scaled = torch.stack(
            [width - scaled[:, 2], scaled[:, 1], width - scaled[:, 0], scaled[:, 3]], 1
        )
        grids = grids.flip(-1)
    rois = torch.cat([torch.zeros(len(scaled), 1), scaled], 1)
    return rois, grids


def _fc_path(in_dim: int, fc_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_dim, fc_dim),
        nn.ReLU(inplace=True),
        nn.Linear(fc_dim, fc_dim),
        nn.ReLU(inplace=True),
    )


class ProposalClassifier(nn.Module):
    """Backbone → RoIAlign on each proposal's box → box path and RoI-masked path → C+1 logits.

    With ``roi_norm`` each path standardises every channel of its pooled features
    (BatchNorm2d) before its fc layers: fc layers trained from scratch on features whose
    channels differ in scale and mean (the tiny backbone's: means 0 to 5) barely learn by SGD
    in a CPU-sized schedule without it. MNC's ImageNet fc6 expects VGG's raw pool5 features,
    so the paper configs leave it off. Hidden fc layers start Kaiming-normal (fc6/fc7 come
    from ImageNet at paper settings), the class layer N(0, 0.01) as MNC's.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        pool_size: int = 7,
        fc_dim: int = 256,
        roi_norm: bool = False,
    ) -> None:
        super().__init__()
        if backbone.stride != STRIDE:
            raise IfcnError(
                f"backbone has stride {backbone.stride}; proposals are pooled at "
                f"ifcn.windows.STRIDE = {STRIDE}"
            )
        self.backbone = backbone
        self.num_classes, self.pool_size = num_classes, pool_size
        self.grid_size = mask_grid_size(pool_size)
        self.spatial_scale = 1.0 / STRIDE
        in_dim = backbone.out_channels * pool_size * pool_size
        self.box_path = _fc_path(in_dim, fc_dim)
        self.mask_path = _fc_path(in_dim, fc_dim)
        self.cls_score = nn.Linear(2 * fc_dim, num_classes + 1)
        channels = backbone.out_channels
        self.box_norm = nn.BatchNorm2d(channels) if roi_norm else nn.Identity()
        self.mask_norm = nn.BatchNorm2d(channels) if roi_norm else nn.Identity()
        for fc in (*self.box_path, *self.mask_path):
            if isinstance(fc, nn.Linear):
                nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
                nn.init.zeros_(fc.bias)
        init_new_layers(self.cls_score)

    def roi_features(self, features: Tensor, rois: Tensor, grids: Tensor) -> tuple[Tensor, Tensor]:
        """Features [n, C, P, P] of the boxes, and the same zeroed outside the masks first.

        ``grids`` [n, 2P, 2P] are the masks on the 2P×2P RoIAlign grid that both max-pool.
        """
        pooled = roi_align(
            features, rois, self.grid_size, self.spatial_scale, sampling_ratio=2, aligned=True
        )
        masked = pooled * grids[:, None].to(pooled.dtype)
        return F.max_pool2d(pooled, 2), F.max_pool2d(masked, 2)

    def forward(self, images: Tensor, rois: Tensor, grids: Tensor) -> Tensor:
        """Images [B, 3, H, W], RoIs [n, 5] (batch index, x0, y0, x1, y1 in image pixels) and
        mask grids [n, P, P] → class logits [n, C+1]."""
        features = self.backbone(images)
        boxed, masked = self.roi_features(features, rois.to(features.dtype), grids)
        joint = torch.cat(
            [self.box_path(self.box_norm(boxed)), self.mask_path(self.mask_norm(masked))], 1
        )
        return self.cls_score(joint)


def build_classifier(
    config: dict,
    num_classes: int,
    pretrained: bool | None = None,
    imagenet_fc: bool | None = None,
) -> ProposalClassifier:
    """The network of the config (backbone from `model`, head sizes from `classify`).

    `pretrained` overrides model.pretrained for the backbone (False when its weights come from
    a checkpoint); `imagenet_fc` overrides classify.pretrained_fc for the fc layers (False when
    a classifier checkpoint will overwrite them: prediction, resumed training).
    """
    model_cfg, cfg = config["model"], config["classify"]
    use_imagenet = model_cfg["pretrained"] if pretrained is None else pretrained
    backbone = build_backbone(model_cfg["backbone"], use_imagenet, model_cfg["weights"])
    model = ProposalClassifier(
        backbone,
        num_classes,
        cfg["pool_size"],
        cfg["fc_dim"],
        cfg.get("roi_norm", False),  # checkpoints from before the key had no norm
    )
    fc_from_imagenet = cfg.get("pretrained_fc", False) if imagenet_fc is None else imagenet_fc
    if fc_from_imagenet:
        load_imagenet_fc(model, model_cfg["backbone"], model_cfg["weights"])
    return model


def load_imagenet_fc(model: ProposalClassifier, backbone: str, weights: str | None) -> Path:
    """Copy VGG-16's ImageNet fc6/fc7 into both paths' fc layers (MNC's stage 3); return the
    file read. The file is found as the backbone's (`find_pretrained_weights`)."""
    if backbone != "vgg16":
        raise IfcnError(
            f"classify.pretrained_fc needs model.backbone vgg16 (ImageNet fc6/fc7), not {backbone}"
        )
    path = find_pretrained_weights("vgg16", weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise IfcnError(f"cannot read pretrained weights for vgg16: {exc}", path) from None
    if not isinstance(state, dict):
        raise IfcnError("pretrained weights for vgg16 are not a state dict", path)
    for path_name in ("box_path", "mask_path"):
        fc_path = getattr(model, path_name)
        for index, name in _VGG16_FC.items():
            layer = fc_path[int(index)]
            for kind in ("weight", "bias"):
                key = f"{name}.{kind}"
                value = state.get(key)
                ours = getattr(layer, kind)
                if value is None or tuple(value.shape) != tuple(ours.shape):
                    found = "missing" if value is None else f"shape {tuple(value.shape)}"
                    raise IfcnError(
                        f"classify.pretrained_fc: {key} is {found}, the classifier needs "
                        f"{tuple(ours.shape)} (VGG-16 fc6/fc7 fit pool_size 7 and fc_dim 4096)",
                        path,
                    )
                with torch.no_grad():
                    ours.copy_(value)
    return path


def proposal_backbone(path: str | Path, config: dict) -> dict[str, torch.Tensor]:
    """The backbone weights of an `ifcn train` checkpoint (the proposal model), checked to be
    of the config's backbone."""
    state = checkpoint.load(path, kind=checkpoint.PROPOSAL_MODEL)
    theirs = state["config"].get("model", {}).get("backbone")
    ours = config["model"]["backbone"]
    if theirs != ours:
        raise IfcnError(
            f"proposal model has backbone {theirs!r}, the config asks for {ours!r}", path
        )
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}


def set_backbone(
    model: ProposalClassifier, weights: dict[str, torch.Tensor], path: str | Path
) -> None:
    """Copy `proposal_backbone`'s weights (read from ``path``) into the classifier."""
    try:
        model.backbone.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise IfcnError(f"backbone weights do not fit ({first})", path) from None


def load_backbone_from(model: ProposalClassifier, path: str, config: dict) -> None:
    """Copy the backbone of an `ifcn train` checkpoint (the proposal model) into `model`."""
    set_backbone(model, proposal_backbone(path, config), path)
