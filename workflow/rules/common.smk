# Config look-ups and input functions shared by the rules (no lambdas inside rules).
import json
import os

# The file the ifcn commands read: the last --configfile, else the default. Snakemake's own
# `config` (validated, defaults filled) gives paths and rerun triggers: each rule lists the config
# sections it depends on as params, so changing nms.iou reruns nms onwards only.
from ifcn.config import load_config

CONFIG_FILE = (workflow.overwrite_configfiles or ["config/config.yaml"])[-1]
# Snakemake layers --configfile over config/config.yaml; a run is described by its one file, so
# keys it leaves out take the schema's defaults, not the synthetic default's values.
if workflow.overwrite_configfiles:
    config.clear()
    config.update(load_config(CONFIG_FILE))
RUN = config["run"]
RESULTS = f"results/{RUN}"
DATA = config["data"]
SPLITS = {
    "train": (DATA["train_json"], DATA["train_images"]),
    "val": (DATA["val_json"], DATA["val_images"]),
}
SHARDS = list(range(config["infer"]["shards"]))
if DATA["dataset"] == "coco" and not (DATA["source"] and os.path.isdir(DATA["source"])):
    raise ValueError(
        f"{CONFIG_FILE}: data.source must name the folder of the COCO export for dataset "
        f"'coco' (got {DATA['source']!r})"
    )


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
    return [result("report.md"), result("val/segm_eval.json")]


def first_n_option(wildcards):
    """`--first-n N` for evaluations of the val split when data.first_n is set."""
    first_n = DATA["first_n"]
    split = getattr(wildcards, "split", "val")
    return f"--first-n {first_n}" if first_n and split == "val" else ""


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
