"""The paper's ablations (Tables 1 and 2) as named variants of a run's config.

Named here once, for the `ifcn ablation` command, the workflow and the report alike. A variant
is trained in results/<run>/ablation/<variant>/ unless nothing it trains and evaluates differs
from the run itself (it then reuses the run's val/ar.json) or from a variant before it (it then
shares that variant's folder): `plan_ablations`, which the workflow follows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ifcn.config import set_keys
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

# The sections that decide a variant's val/ar.json: two configs equal in these give equal AR.
AR_SECTIONS = ("data", "model", "train", "infer", "nms", "evaluate")


def apply_overrides(config: dict, overrides: dict, source: str | Path = "<config>") -> dict:
    """A validated copy of ``config`` with dotted keys (``model.k``) set to new values."""
    return set_keys(config, overrides, source=source)


def variant_config(config: dict, variant: str) -> dict:
    """The run's config as ``variant`` of the ablations trains it (run name unchanged)."""
    if variant not in VARIANTS:
        raise IfcnError(
            f"unknown ablation variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )
    return apply_overrides(config, VARIANTS[variant])


def _ar_settings(config: Mapping) -> str:
    return json.dumps({name: config[name] for name in AR_SECTIONS}, sort_keys=True)


@dataclass(frozen=True)
class AblationPlan:
    """The run folders of a run and its ablation variants.

    ``folders``: each folder that trains a model -> its config, the run's own first, then
    results/<run>/ablation/<variant> for each variant unlike the run and unlike every variant
    before it. ``ar_files``: each variant's val/ar.json, in the folder that makes it.
    """

    folders: dict[str, dict]
    ar_files: dict[str, str]


def plan_ablations(config: dict, results: str) -> AblationPlan:
    """Where each variant of the run in ``results`` is trained: variants whose settings equal
    the run's reuse its ar.json, variants equal to each other share one folder."""
    own = _ar_settings(config)
    folders = {results: config}
    owners: dict[str, str] = {}  # settings -> the first variant folder with them
    ar_files = {}
    for name in VARIANTS:
        variant = variant_config(config, name)
        settings = _ar_settings(variant)
        if settings == own:
            folder = results
        else:
            folder = owners.setdefault(settings, f"{results}/ablation/{name}")
            folders.setdefault(folder, variant)
        ar_files[name] = f"{folder}/val/ar.json"
    return AblationPlan(folders, ar_files)
