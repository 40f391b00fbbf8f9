# The run's config, its folders, and the input functions of the rules (no lambdas in rules).
import json
import os
import re
import shlex
import sys

# This checkout's ifcn package, for the workflow itself and for every job: in each job's shell
# `ifcn` is `python -m ifcn` with the checkout first on PYTHONPATH, so the jobs need only the
# dependencies installed (the venv of `make`, or the conda env of environment.yml under
# `--sdm conda`) and always run the code of the workflow that planned them.
sys.path.insert(0, workflow.basedir)
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    'ifcn() {{ python -m ifcn "$@"; }}; '  # the prefix is formatted too: braces doubled
)

from ifcn.classify.settings import classifier_summary
from ifcn.config import RESUME_NEUTRAL, run_config, write_config
from ifcn.errors import IfcnError
from ifcn.variants import TABLES, VARIANTS, variant_config

# One config route: the --configfile files (default config/config.yaml) with the --config
# overrides laid over them, validated against the schema, defaults filled and data paths
# derived. It is written to results/<run>/config.yaml (`run_config_file`), which every stage
# reads; the rules list the sections they depend on as `settings` params, so a changed nms
# section reruns nms onwards only.
CONFIG_FILES = [str(path) for path in workflow.config_settings.configfiles] or [
    os.path.join(workflow.basedir, "config", "config.yaml")
]
config.clear()
config.update(run_config(CONFIG_FILES, workflow.config_settings.config))
RUN = config["run"]
RESULTS = f"results/{RUN}"
# what the run's Table 4 will mean, said before anything runs (also in a dry run); once, not
# again in each cluster job that re-reads the workflow
if workflow.is_main_process:
    print(f"run {RUN}: {classifier_summary(config)}", file=sys.stderr)
DATA = config["data"]
SPLITS = {
    "train": (DATA["train_json"], DATA["train_images"]),
    "val": (DATA["val_json"], DATA["val_images"]),
}
SHARDS = list(range(config["infer"]["shards"]))
if DATA["dataset"] == "coco" and not os.path.isdir(DATA["source"]):
    raise IfcnError(
        "data.source is not a folder (the COCO export to convert)",
        " + ".join(CONFIG_FILES),
    )

# Ablation variants (ifcn.variants) live in results/<run>/ablation/<variant>/, each with its own
# config.yaml, and are run by the same stage rules as the run itself. A variant whose settings
# equal the run's reuses the run's ar.json; variants equal to each other share one folder.
ABLATION_SECTIONS = ("data", "model", "train", "infer", "nms", "evaluate")


def _ablation_settings(cfg):
    return json.dumps({name: cfg[name] for name in ABLATION_SECTIONS}, sort_keys=True)


VARIANT_CONFIGS = {name: variant_config(config, name) for name in VARIANTS}
ABLATION_HOMES, _owners = {}, {}
for _name, _cfg in VARIANT_CONFIGS.items():
    _settings = _ablation_settings(_cfg)
    ABLATION_HOMES[_name] = (
        None
        if _settings == _ablation_settings(config)
        else _owners.setdefault(_settings, _name)
    )
ABLATION_TRAINED = sorted({home for home in ABLATION_HOMES.values() if home})
FOLDER_PATTERN = re.escape(RESULTS)
if ABLATION_TRAINED:
    FOLDER_PATTERN += "(?:/ablation/(?:{}))?".format(
        "|".join(re.escape(name) for name in ABLATION_TRAINED)
    )


wildcard_constraints:
    folder=FOLDER_PATTERN,
    split="train|val",
    shard=r"\d+",


def result(path):
    return f"{RESULTS}/{path}"


def log_file(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark_file(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


def folder_config(folder):
    """The effective config of a run folder: the run's own, or an ablation variant's."""
    if folder == RESULTS:
        return config
    return VARIANT_CONFIGS[os.path.basename(folder)]


def write_folder_config(folder):
    """Write the run folder's config.yaml when its text changes.

    A dry run writes a missing one (the plan reads it) but never changes one, so planning a
    change does not alter a run in progress.
    """
    path = f"{folder}/config.yaml"
    if not (workflow.dryrun and os.path.exists(path)):
        write_config(
            folder_config(folder),
            path,
            f"The effective config of {folder} ({' + '.join(CONFIG_FILES)} with --config "
            "overrides and schema defaults), written by the workflow: edit those, not this.",
        )


def run_config_file(wildcards):
    """Input function: the run folder's config.yaml, the file its stages read.

    ancient(): a rewrite reruns nothing by itself; each rule's `settings` decide. Written while
    the workflow is parsed (below), before Snakemake looks at any file: not a job's output,
    because a job that must rerun hides the jobs after it from Snakemake's own checks and
    nothing would reach them through an ancient() file; not written while the plan is built,
    because Snakemake's file cache would not see it.
    """
    return ancient(f"{getattr(wildcards, 'folder', RESULTS)}/config.yaml")


# The config files of the run and of the ablation variants it trains.
for _folder in [RESULTS] + [f"{RESULTS}/ablation/{name}" for name in ABLATION_TRAINED]:
    write_folder_config(_folder)


def settings(*sections):
    """Input function: the folder's config sections a rule depends on (its rerun trigger)."""

    def sections_of(wildcards):
        cfg = folder_config(getattr(wildcards, "folder", RESULTS))
        return json.dumps({name: cfg[name] for name in sections}, sort_keys=True)

    return sections_of


def setting(section, key):
    """Input function: one value of the folder's config, passed as a command-line flag."""

    def value(wildcards):
        return folder_config(getattr(wildcards, "folder", RESULTS))[section][key]

    return value


def training_settings(wildcards):
    """The folder's model and train sections without the keys that do not change the weights
    (logging, checkpointing, workers): the train rule's rerun trigger."""
    cfg = folder_config(getattr(wildcards, "folder", RESULTS))
    train = {k: v for k, v in cfg["train"].items() if k not in RESUME_NEUTRAL}
    return json.dumps({"model": cfg["model"], "train": train}, sort_keys=True)


def classify_training_settings():
    """The classifier's training settings (its prediction settings do not retrain it)."""
    predict_only = {"score_threshold", "nms_iou", "detections_per_image"}
    training = {k: v for k, v in config["classify"].items() if k not in predict_only}
    return json.dumps({"model": config["model"], "classify": training}, sort_keys=True)


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
        "{folder}/{split}/shards/candidates-{shard}.h5",
        folder=wildcards.folder,
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


def first_n_option(wildcards):
    """`--first-n N` for evaluations of the val split when data.first_n is set."""
    first_n = DATA["first_n"]
    split = getattr(wildcards, "split", "val")
    return f"--first-n {first_n}" if first_n and split == "val" else ""


def ablation_ar(variant):
    home = ABLATION_HOMES[variant]
    return (
        result("val/ar.json")
        if home is None
        else result(f"ablation/{home}/val/ar.json")
    )


def ablation_table_inputs(table):
    """Input function of a table rule: the ar.json of each of its variants, in order."""

    def files(wildcards):
        return [ablation_ar(name) for name in TABLES[table]]

    return files


def ablation_names(table):
    return " ".join(TABLES[table])


def report_ablation_files(wildcards):
    if not config["report"]["ablations"]:
        return []
    return [
        result(f"ablation_{table}.{ext}") for table in TABLES for ext in ("csv", "png")
    ]


def report_ablation_options(wildcards):
    if not config["report"]["ablations"]:
        return ""
    return " ".join(
        f"--ablation-{table} {result(f'ablation_{table}.csv')}" for table in TABLES
    )


def picture_files():
    """The PNGs of the figures rule: Fig. 8 for each picture, Fig. 5 for the InstanceFCN head."""
    kinds = ["proposals"] + (
        ["score_maps"] if config["model"]["head"] == "instancefcn" else []
    )
    count = config["report"]["pictures"]
    return [
        result(f"figures/{kind}-{i}.png") for i in range(1, count + 1) for kind in kinds
    ]


def predict_images(wildcards):
    """The `predict` target's photo folder (predict.images), required by its rules."""
    images = config["predict"]["images"]
    if not images:
        raise IfcnError(
            "the predict target needs the folder of your photos: "
            "--config predict='{images: DIR}' (or predict.images in the config file)",
            CONFIG_FILES[-1],
        )
    if not os.path.isdir(images):
        raise IfcnError("predict.images is not a folder", images)
    return images


def predict_checkpoint(wildcards):
    """predict.checkpoint, or the run's own trained model."""
    return config["predict"]["checkpoint"] or result("train/model_final.pt")


def predict_outputs(wildcards):
    predict_images(wildcards)
    pictures = [result("predict/pictures")] if config["predict"]["pictures"] else []
    return [result("predict/proposals.h5"), *pictures]


def all_outputs():
    return [result("report.md"), result("val/segm_eval.json")]


# Jobs of these rules load ImageNet weights when model.pretrained is set.
PRETRAINED_RULES = {"train", "classify_train"}


def check_pretrained_weights():
    """Before the first job: the ImageNet weights that jobs to run will load are here.

    Fails in seconds naming the file to place where, instead of after hours of downloads.
    """
    model = config["model"]
    if not model["pretrained"]:
        return
    if not PRETRAINED_RULES & {job.rule.name for job in workflow.dag.needrun_jobs()}:
        return
    from ifcn.model.backbone import find_pretrained_weights

    if model["backbone"] == "tiny":
        raise IfcnError(
            "backbone tiny has no ImageNet weights; set model.pretrained: false",
            " + ".join(CONFIG_FILES),
        )
    find_pretrained_weights(model["backbone"], model["weights"])


# Archives each dataset needs (`ifcn data download --dataset NAME`) and how each split is
# converted (`ifcn data convert ...`). voc2012 is the paper's protocol (§4.1, as SDS, Hypercolumns
# and MNC): SBD's instances on the VOC 2012 train images (ImageSets/Main/train.txt) for training
# and on the VOC 2012 val images (Main/val.txt) for evaluation, which share no image; sbd is SBD's
# own train/val split; COCO is train2014 / the first 5k val2014 ids.
DOWNLOADS = {
    "voc2012": ["voc2012", "sbd"],
    "sbd": ["sbd"],
    "coco2014": ["coco2014"],
    "coco2017": ["coco2017"],
    "pennfudan": ["pennfudan"],
    "coco": [],
}


def download_flag(name):
    return f"{DATA['root']}/.download-{name}.done"


def download_flags(wildcards):
    return [download_flag(name) for name in DOWNLOADS[DATA["dataset"]]]


def convert_arguments(split):
    """Arguments of `ifcn data convert` that produce the ``split`` JSON of the dataset."""
    root, first_n = DATA["root"], DATA["first_n"]
    limit = f" --first-n {first_n}" if first_n and split == "val" else ""
    dataset = DATA["dataset"]
    sbd = f"--format sbd --root {root}/benchmark_RELEASE/dataset"
    if dataset == "voc2012":
        return f"{sbd} --image-list {root}/VOCdevkit/VOC2012/ImageSets/Main/{split}.txt"
    if dataset == "sbd":
        return f"{sbd} --split {split}"
    if dataset in ("coco2014", "coco2017"):
        year = dataset[-4:]
        return f"--format coco --root {root} --split {split}{year}{limit}"
    if dataset == "pennfudan":
        return f"--format pennfudan --root {root}/PennFudanPed --split {split}"
    name = DATA["train_split"] if split == "train" else DATA["val_split"]
    return f"--format coco --root {DATA['source']} --split {name}{limit}"


def run_settings(wildcards):
    """The run's whole config (a rerun trigger of the report, which reads only files)."""
    return json.dumps(config, sort_keys=True)
