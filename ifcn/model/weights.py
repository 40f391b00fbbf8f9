"""Download a backbone's ImageNet weights where ifcn looks for them.

The file is torchvision's (the URL its `Weights` enums carry), checked against the SHA-256
prefix in its name, and written atomically into torchvision's hub cache
(`<torch hub dir>/checkpoints`), where `model.pretrained: true` finds it with no other setting;
with `--out DIR` it lands in DIR instead, and `model.weights` must name it. Offline, the error
names the URL and the file to place where by hand. EfficientNet-Lite0's weights are a file of
an installed package: nothing to download, the command names the file.

The command `ifcn weights fetch` is `ifcn.commands.weights_fetch`.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch

from ifcn.errors import IfcnError
from ifcn.model.backbone import (
    BACKBONES,
    find_pretrained_weights,
    imagenet_weight_paths,
    imagenet_weight_urls,
    pretrained_weights_status,
    sha256_mismatch,
)


def fetch_weights(backbone: str, out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The ImageNet weights file of ``backbone``, downloaded unless it is already there (with
    the SHA-256 its name promises; efficientnet_lite0's: the installed package's file, never
    downloaded or copied)."""
    if backbone == "efficientnet_lite0":
        return find_pretrained_weights(backbone, None)
    url = imagenet_weight_urls(backbone)[0]
    folder = imagenet_weight_paths(backbone)[0].parent if out_dir is None else Path(out_dir)
    dest = folder / Path(url).name
    match = torch.hub.HASH_REGEX.search(dest.name)
    if dest.is_file():
        _check_hash(dest)
        return dest
    where = "download it by hand and place it at this path"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(dest), hash_prefix=match.group(1) if match else None, progress=progress
        )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise IfcnError(f"cannot download {url} ({reason}); {where}", dest) from None
    except RuntimeError as exc:  # torch.hub's hash check
        raise IfcnError(f"{url} is corrupt ({exc}); {where}", dest) from None
    except OSError as exc:
        raise IfcnError(f"cannot write the weights ({exc.strerror or exc})", dest) from None
    return dest


def _check_hash(path: Path) -> None:
    """A file already at the destination is kept only if its SHA-256 begins as its name
    promises; else IfcnError (it is the user's file: refused, not replaced)."""
    why = sha256_mismatch(path)
    if why is not None:
        raise IfcnError(f"already here, but {why}: delete it and fetch again", path)


def weights_table() -> list[tuple[str, str, str]]:
    """(backbone, file or '-', note) for every backbone, in the order of BACKBONES."""
    rows = []
    for name in BACKBONES:
        path, note = pretrained_weights_status(name)
        rows.append((name, str(path) if path is not None else "-", note))
    return rows
