# Config look-ups and input functions shared by the rules (no lambdas inside rules).
import json
import os

# The file the ifcn commands read: the last --configfile, else the default. Snakemake's own
# `config` (validated, defaults filled) gives paths and rerun triggers: each rule lists the config
# sections it depends on as params, so changing nms.iou reruns nms onwards only.
CONFIG_FILE = (workflow.overwrite_configfiles or ["config/config.yaml"])[-1]
RUN = config["run"]
RESULTS = f"results/{RUN}"
DATA = config["data"]
SPLITS = {
    "train": (DATA["train_json"], DATA["train_images"]),
    "val": (DATA["val_json"], DATA["val_images"]),
}
SHARDS = list(range(config["infer"]["shards"]))


wildcard_constraints:
    split="train|val",
    shard=r"\d+",


def result(path):
    return f"{RESULTS}/{path}"


def log_file(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark_file(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


def section(*names):
    """The config sections a rule depends on, as a canonical string (a rerun trigger)."""
    return json.dumps({name: config[name] for name in names}, sort_keys=True)


def parent_of_output(name):
    """Input function: the folder of output ``name`` (for CLIs that take an output folder)."""

    def folder(wildcards, output):
        return os.path.dirname(output[name])

    return folder


def split_json(wildcards):
    return SPLITS[wildcards.split][0]


def split_images(wildcards):
    return SPLITS[wildcards.split][1]


def shard_files(wildcards):
    return expand(
        result("{split}/shards/candidates-{shard}.h5"),
        split=wildcards.split,
        shard=SHARDS,
    )


def maybe_temp(path, keep):
    return path if keep else temp(path)


def train_launcher(wildcards, resources):
    """One process per GPU under torchrun when a job is given more than one GPU."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m ifcn"
    return "ifcn"


def all_outputs():
    return [result("report.md")]


def first_n_option(wildcards):
    first_n = DATA["first_n"]
    return f"--first-n {first_n}" if first_n and wildcards.split == "val" else ""
