# Config look-ups and input functions shared by the rules (no lambdas inside rules).
import json
import os

# The file the ifcn commands read: the last --configfile, else the default. Snakemake's own
# `config` (validated above, defaults filled) is used for paths and for rerun triggers: each rule
# lists the config sections it depends on as params, so changing nms.iou reruns nms onwards only.
CONFIG_FILE = (workflow.overwrite_configfiles or ["config/config.yaml"])[-1]
RUN = config["run"]
RESULTS = f"results/{RUN}"
DATA = config["data"]


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


def train_launcher(wildcards, resources):
    """One process per GPU under torchrun when a job is given more than one GPU."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m ifcn"
    return "ifcn"


def all_outputs():
    return [result("train/model_final.pt")]
