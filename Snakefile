# InstanceFCN pipeline: data -> train -> infer (sharded) -> merge -> nms -> evaluate -> classify
# -> figures -> report. Run with `snakemake --cores all` (or `make run`); another dataset:
# `--configfile config/coco.yaml`; overrides: `--config nms='{iou: 0.7}'`. The config is
# validated against workflow/schemas/config.schema.yaml (errors name the config file) and
# written to results/<run>/config.yaml, which every stage reads (workflow/rules/common.smk).
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


onstart:
    check_pretrained_weights()


rule all:
    default_target: True
    input:
        result("report.md"),
        result("val/segm_eval.json"),
