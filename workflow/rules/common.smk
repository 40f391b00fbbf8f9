# The run's config, its folders, and the input functions of the rules (no lambdas in rules).
# What they decide lives in ifcn: ifcn.config, ifcn.data.datasets, ifcn.variants.
import hashlib
import os
import re
import shlex
import sys
from pathlib import Path

# This checkout's ifcn, for the workflow and every job (`ifcn` is `python -m ifcn` with the
# checkout first on PYTHONPATH): jobs need only the dependencies (the venv of `make`, or
# environment.yml under `--sdm conda`) and run the code of the workflow that planned them.
sys.path.insert(0, workflow.basedir)
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    'ifcn() {{ python -m ifcn "$@"; }}; '  # the prefix is formatted too: braces doubled
)

from ifcn.classify.settings import classifier_summary
from ifcn.config import prediction_keys, run_config, settings_of, training_settings
from ifcn.config import config_json, write_run_config
from ifcn.data.datasets import convert_request, dataset, require_sources
from ifcn.data.folder import EXTENSIONS, image_files
from ifcn.errors import IfcnError
from ifcn.variants import TABLES, plan_ablations

# One config route: the --configfile files (default config/config.yaml) with the --config
# overrides over them, validated, written to the config.yaml of each run folder (the run's and
# its ablation variants'), which the folder's stages read (`--config`). The rules list the
# settings they read as `settings` params, their rerun triggers.
CONFIG_FILES = [str(path) for path in workflow.config_settings.configfiles] or [
    os.path.join(workflow.basedir, "config", "config.yaml")
]
config.clear()
config.update(run_config(CONFIG_FILES, workflow.config_settings.config))
RESULTS = f"results/{config['run']}"
DATA = config["data"]
DATASET = dataset(DATA["dataset"])
require_sources(DATA, " + ".join(CONFIG_FILES))
ABLATIONS = plan_ablations(config, RESULTS)
for _folder, _config in ABLATIONS.folders.items():  # see run_config_file
    write_run_config(_config, _folder, CONFIG_FILES, dry_run=workflow.dryrun)
# what the run's Table 4 will mean, said before anything runs (also in a dry run); once, not
# again in each cluster job that re-reads the workflow
if workflow.is_main_process:
    print(f"run {config['run']}: {classifier_summary(config)}", file=sys.stderr)


wildcard_constraints:
    folder="|".join(re.escape(folder) for folder in ABLATIONS.folders),
    split="train|val",
    shard=r"\d+",


def result(path):
    return f"{RESULTS}/{path}"


def log_file(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark_file(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


def run_config_file(wildcards):
    """Input function: the run folder's config.yaml, the file its stages read. ancient(): a
    rewrite reruns nothing by itself, each rule's `settings` decide. Written while the workflow
    is parsed (above): as a job's output, a job that must rerun would hide the jobs after it
    from Snakemake's checks; while the plan is built, Snakemake's file cache would miss it.
    """
    return ancient(f"{getattr(wildcards, 'folder', RESULTS)}/config.yaml")


def _folder_config(wildcards):
    return ABLATIONS.folders[getattr(wildcards, "folder", RESULTS)]


def settings(*keys):
    """Input function: the folder's config sections or keys a rule reads (its rerun trigger)."""
    return lambda w: config_json(settings_of(_folder_config(w), keys))


def trained_by(section):
    """Input function: what the model trained by ``section`` depends on (its rerun trigger)."""
    return lambda w: config_json(training_settings(_folder_config(w), section))


def parent_of_output(name):
    """Input function: the folder of output ``name`` (for CLIs that take an output folder)."""
    return lambda wildcards, output: os.path.dirname(output[name])


def split_data(kind):
    """Input function: the ``json`` or ``images`` of the split (data.train_json, ...)."""
    return lambda wildcards: DATA[f"{wildcards.split}_{kind}"]


def shard_files(wildcards):
    return expand(
        "{folder}/{split}/shards/candidates-{shard}.h5",
        folder=wildcards.folder,
        split=wildcards.split,
        shard=range(config["infer"]["shards"]),
    )


def train_launcher(wildcards, resources):
    """One process per GPU under torchrun when a job is given more than one GPU."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return ["torchrun", "--standalone", "--nproc-per-node", str(gpus), "-m", "ifcn"]
    return ["ifcn"]


def download_flag(name):
    return f"{DATA['root']}/.download-{name}.done"


def report_ablations(wildcards):
    """The report's `--ablation-<table> CSV` arguments (report.ablations), quoted by `:q`."""
    tables = TABLES if config["report"]["ablations"] else []
    return [a for t in tables for a in (f"--ablation-{t}", result(f"ablation_{t}.csv"))]


def ablation_tables(wildcards):
    return report_ablations(wildcards)[1::2]


def picture_files():
    """The PNGs of the figures rule: Fig. 8 for each picture, Fig. 5 for the InstanceFCN head."""
    kinds = ["proposals"] + (
        ["score_maps"] if config["model"]["head"] == "instancefcn" else []
    )
    count = range(1, config["report"]["pictures"] + 1)
    return [result(f"figures/{kind}-{i}.png") for i in count for kind in kinds]


def predict_images(wildcards):
    """The `predict` target's photo folder (predict.images), required by its rules."""
    images = config["predict"]["images"]
    if not (images and os.path.isdir(images)):
        what = "not a folder" if images else "missing: --config predict='{images: DIR}'"
        raise IfcnError(f"predict.images (your photos) is {what}", CONFIG_FILES[-1])
    return images


def predict_photos(wildcards):
    """Params function: a digest of the photos `ifcn infer --image-dir` will read (as
    ifcn.data.folder lists them: each one's path, size and time stamp), a rerun trigger, so
    that adding, removing or changing a photo reruns the prediction. Not the photos as inputs:
    Snakemake reads a '{x}' in an input's path as a wildcard, and a photo's name may hold one.
    """
    folder = Path(predict_images(wildcards))
    digest = hashlib.sha256()
    files = image_files(folder)
    if not files:
        kinds = ", ".join(e.lstrip(".") for e in EXTENSIONS)
        raise IfcnError(f"predict.images holds no photos ({kinds})", folder)
    for name in files:
        try:
            stat = (folder / name).stat()
        except OSError as exc:
            raise IfcnError(f"cannot read the photo ({exc.strerror})", folder / name)
        digest.update(
            f"{name.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return f"{len(files)} photos, sha256 {digest.hexdigest()}"


def predict_outputs(wildcards):
    predict_images(wildcards)
    pictures = [result("predict/pictures")] if config["predict"]["pictures"] else []
    return [result("predict/proposals.h5"), *pictures]


def check_pretrained_weights():
    """Before the first job: the ImageNet weights that jobs to run will load are here (fails in
    seconds naming the file to place where, instead of after hours of downloads)."""
    jobs = {job.rule.name for job in workflow.dag.needrun_jobs()}
    if config["model"]["pretrained"] and {"train", "classify_train"} & jobs:
        # imported here, not above: it imports torch (seconds), which the workflow's parse,
        # repeated twice by each cluster job, needs nowhere else
        from ifcn.model.backbone import find_pretrained_weights

        find_pretrained_weights(config["model"]["backbone"], config["model"]["weights"])
