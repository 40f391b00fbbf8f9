"""The paper's ablations (Tables 1 and 2) as named variants of a run's config.

Named here once, for the `ifcn ablation` command, the workflow and the report alike.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ifcn.config import validate_config
from ifcn.errors import IfcnError

# Table 2 trains on 224×224 crops at the training scale, as DeepMask does.
CROP = 224

# Table 1: the number of relative positions; k = 1 is the plain FCN of Fig. 1 (top), which has
# a single score map and so cannot tell touching instances apart.
K_VARIANTS: dict[str, dict] = {
    f"k={k}": {"model.k": k, "model.head": "instancefcn", "train.crop": None} for k in (1, 3, 5, 7)
}
# Table 2: InstanceFCN against ~DeepMask, each trained on crops and on full images; both are
# tested fully convolutionally (~DeepMask's fc applied at every window: the "sliding fc").
HEAD_VARIANTS: dict[str, dict] = {
    "instancefcn-full": {"model.head": "instancefcn", "train.crop": None},
    "instancefcn-crop": {"model.head": "instancefcn", "train.crop": CROP},
    "deepmask-crop": {"model.head": "deepmask", "train.crop": CROP},
    "deepmask-full": {"model.head": "deepmask", "train.crop": None},
}
TABLES: dict[str, dict[str, dict]] = {"k": K_VARIANTS, "head": HEAD_VARIANTS}
VARIANTS: dict[str, dict] = {**K_VARIANTS, **HEAD_VARIANTS}


def apply_overrides(config: dict, overrides: dict, source: str | Path = "<config>") -> dict:
    """A validated copy of ``config`` with dotted keys (``model.k``) set to new values."""
    out = copy.deepcopy(config)
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise IfcnError(f"cannot set {dotted}: {name} is not a section", source)
        node[key] = value
    return validate_config(out, source)


def variant_config(config: dict, variant: str) -> dict:
    """The run's config as ``variant`` of the ablations trains it (run name unchanged)."""
    if variant not in VARIANTS:
        raise IfcnError(
            f"unknown ablation variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )
    return apply_overrides(config, VARIANTS[variant])
