# Input functions and look-ups of the ablation and report rules (included by both;
# Snakemake reads it once).
import re

from ifcn.variants import TABLES, VARIANTS, variant_config

ABLATION_BASE = load_config(CONFIG_FILE)
# what makes two runs give the same ar.json
ABLATION_SECTIONS = ("data", "model", "train", "infer", "nms", "evaluate")


def _ablation_settings(cfg, names=ABLATION_SECTIONS):
    return json.dumps({name: cfg[name] for name in names}, sort_keys=True)


def _ablation_homes():
    """Variant -> the variant folder that trains it, or None where the main run is the same."""
    homes, owners = {}, {}
    main = _ablation_settings(ABLATION_BASE)
    for name in VARIANTS:
        settings = _ablation_settings(variant_config(ABLATION_BASE, name))
        homes[name] = None if settings == main else owners.setdefault(settings, name)
    return homes


ABLATION_HOMES = _ablation_homes()
ABLATION_TRAINED = sorted({home for home in ABLATION_HOMES.values() if home})


wildcard_constraints:
    variant="|".join(re.escape(name) for name in ABLATION_TRAINED),


def ablation_path(variant, path):
    return result(f"ablation/{variant}/{path}")


def ablation_ar(variant):
    home = ABLATION_HOMES[variant]
    return result("val/ar.json") if home is None else ablation_path(home, "val/ar.json")


def ablation_table_inputs(table):
    """Input function of a table rule: the ar.json of each of its variants, in order."""

    def files(wildcards):
        return [ablation_ar(name) for name in TABLES[table]]

    return files


def ablation_names(table):
    return " ".join(TABLES[table])


def ablation_overrides(wildcards):
    """`--set` options of `ifcn ablation config` for a variant (a rerun trigger too)."""
    settings = VARIANTS[wildcards.variant]
    return " ".join(
        f"--set {key}={'null' if value is None else value}"
        for key, value in settings.items()
    )


def ablation_section(*names):
    """Input function: the variant's own config sections, as `section` gives the main run's."""

    def settings(wildcards):
        return _ablation_settings(
            variant_config(ABLATION_BASE, wildcards.variant), names
        )

    return settings


def ablation_first_n():
    first_n = DATA["first_n"]
    return f"--first-n {first_n}" if first_n else ""


# Snakemake hands `--config report='{ablations: true}'` over as the string "true".
REPORT_ABLATIONS = str(config["report"]["ablations"]).lower() == "true"


def report_ablation_files(wildcards):
    if not REPORT_ABLATIONS:
        return []
    return [
        result(f"ablation_{table}.{ext}")
        for table in ("k", "head")
        for ext in ("csv", "png")
    ]


def report_ablation_options(wildcards):
    if not REPORT_ABLATIONS:
        return ""
    return f"--ablation-k {result('ablation_k.csv')} --ablation-head {result('ablation_head.csv')}"


def report_pictures():
    """The PNGs `ifcn report` draws: Fig. 8 for each picture, Fig. 5 for the InstanceFCN head."""
    kinds = ["proposals"] + (
        ["score_maps"] if config["model"]["head"] == "instancefcn" else []
    )
    count = config["report"]["pictures"]
    return [
        result(f"figures/{kind}-{i}.png") for i in range(1, count + 1) for kind in kinds
    ]
