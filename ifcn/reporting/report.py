"""results/<run>/report.md, written from the run's own files: its sections, tables and links.

The command `ifcn report` is `ifcn.commands.report`, whose docstring says what the report reads
and how it lays the figures out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ifcn import paper
from ifcn.evaluation.ar import output_paths
from ifcn.provenance import run_provenance
from ifcn.reporting.summaries import (
    Picture,
    fraction_text,
    read_ablation_table,
    read_ar,
    read_benchmarks,
    read_figures_index,
    read_segm_eval,
    read_training_log,
)
from ifcn.variants import VARIANTS

PUBLISHED = "InstanceFCN, ECCV 2016"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _link(path: Path, out_dir: Path, alt: str) -> str:
    return f"![{alt}]({Path(os.path.relpath(path, out_dir)).as_posix()})"


def ar_table(ar: dict) -> pd.DataFrame:
    """This run's AR@N in percent: all objects, then each object size."""
    ns = [key.split("@")[1] for key in ar if key.startswith("AR@")]
    rows = [{"objects": "all", **{f"AR@{n} (%)": ar[f"AR@{n}"] for n in ns}}]
    for area, values in ar.get("by_area", {}).items():
        if area != "all":
            rows.append({"objects": area, **{f"AR@{n} (%)": values.get(n) for n in ns}})
    frame = pd.DataFrame(rows)
    for column in frame.columns[1:]:
        frame[column] = [None if v is None else round(100 * v, 1) for v in frame[column]]
    return frame


def map_table(segm: dict) -> pd.DataFrame:
    """This run's mAP (all categories) and AP per category, in percent."""
    rows = [{"category": "all (mAP)", "AP@0.5": segm["mAP@0.5"], "AP@0.7": segm["mAP@0.7"]}]
    for entry in segm.get("per_category", []):
        name = str(entry.get("name", entry["category_id"]))
        rows.append(
            {"category": name, "AP@0.5": entry.get("AP@0.5"), "AP@0.7": entry.get("AP@0.7")}
        )
    frame = pd.DataFrame(rows)
    for column in ("AP@0.5", "AP@0.7"):
        frame[f"{column} (%)"] = [None if v is None else round(100 * v, 1) for v in frame[column]]
    return frame[["category", "AP@0.5 (%)", "AP@0.7 (%)"]]


def _frame_lines(frame: pd.DataFrame) -> list[str]:
    def cell(value) -> str:
        if isinstance(value, str):
            return value
        return "–" if value is None or pd.isna(value) else f"{value:.1f}"

    rows = [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    return _table([str(c) for c in frame.columns], rows)


def _describe_run(config: dict) -> list[str]:
    model, train = config["model"], config["train"]
    head = f"`{model['head']}`"
    if model["head"] == "deepmask":
        scoring = model.get("deepmask_scoring")
        head += (
            f" (~DeepMask; objectness scored by its `{scoring}` branch, model.deepmask_scoring)"
            if scoring
            else " (~DeepMask)"
        )
    crop = train.get("crop")
    return [
        f"# ifcn report: run `{config['run']}`",
        "",
        f"Dataset `{config['data']['dataset']}` (training images `{config['data']['train_json']}`"
        f", evaluation images `{config['data']['val_json']}`); backbone `{model['backbone']}`"
        f"{' (ImageNet weights)' if model['pretrained'] else ''}, head {head}, k = {model['k']}, "
        f"m = {model['m']}; {train['iters']} training iterations at shorter sides "
        f"{train['scales']}{f' on {crop}×{crop} crops' if crop else ''}; inference at "
        f"{config['infer']['scales']}; NMS IoU {config['nms']['iou']}, N = "
        f"{config['nms']['top_n']}. {_loss_sentence(train['loss_reduction'])} The settings "
        "are the run's config file, `config.yaml` beside this report. The paper's published "
        "figures are in the last section, apart.",
        "",
    ]


def _loss_sentence(reduction: str) -> str:
    """How the run weighed eq. (1)'s two terms, since the default departs from the paper."""
    if reduction == "sum":
        return (
            "Loss: eq. (1) literally, the logistic losses of every sampled window and of every "
            "pixel of the positive windows summed (train.loss_reduction: sum)."
        )
    return (
        "Loss: eq. (1)'s two logistic terms, each averaged (objectness over the sampled "
        "windows, mask over the positive windows' in-image pixels) and added 1:1 "
        "(train.loss_reduction: mean, our choice; the paper writes a plain sum)."
    )


def _ar_section(ar: dict, ar_path: Path, out_dir: Path) -> list[str]:
    num_gt = ar.get("num_gt", "?")
    if isinstance(num_gt, dict):  # per area range; "all" counts every object
        num_gt = num_gt.get("all", "?")
    lines = ["## Segment proposals", ""]
    lines += [
        f"Mask average recall over IoU 0.50:0.05:0.95 ({ar.get('matching', 'coco')} "
        f"matching) on {ar.get('num_images', '?')} images, {num_gt} objects; by object size "
        "with COCO's area limits.",
        "",
    ]
    lines += _frame_lines(ar_table(ar)) + [""]
    plot = output_paths(ar_path)["png"]
    if plot.exists():
        lines += ["Recall against IoU (as the paper's Fig. 6/7):", ""]
        lines += [_link(plot, out_dir, "recall vs IoU"), ""]
    return lines


def _training_section(log: pd.DataFrame, plot: Path | None, out_dir: Path) -> list[str]:
    last = log.iloc[-1]
    terms = ", ".join(f"{c} {last[c]:.4g}" for c in log.columns if c.startswith("loss"))
    lines = ["## Training", ""]
    lines += [
        f"{len(log)} logged steps up to iteration {int(last['iteration'])}; last logged "
        f"{terms} (train/train_log.csv).",
        "",
    ]
    if plot is not None:
        lines += [_link(plot, out_dir, "training loss"), ""]
    return lines


def _segm_section(segm: dict) -> list[str]:
    lines = ["## Instance segmentation (downstream classifier)", ""]
    lines += [
        f"The MNC-style classifier on this run's proposals, {segm.get('num_images', '?')} "
        "images; AP per category and their mean.",
        "",
    ]
    return lines + _frame_lines(map_table(segm)) + [""]


def _settings_text(variant: str) -> str:
    settings = VARIANTS.get(variant)
    if settings is None:
        return ""
    return ", ".join(
        f"{key}={'null' if value is None else value}" for key, value in settings.items()
    )


def _ablation_section(title: str, intro: str, path: Path, out_dir: Path) -> list[str]:
    frame = read_ablation_table(path)
    columns = [c for c in frame.columns if str(c).startswith("AR@")]
    header = ["variant", *[f"{c} (%)" for c in columns], "settings"]
    rows = [
        [
            str(row["variant"]),
            *[fraction_text(row[c]) for c in columns],
            _settings_text(row["variant"]),
        ]
        for _, row in frame.iterrows()
    ]
    lines = [f"## {title}", "", intro, ""] + _table(header, rows) + [""]
    plot = path.with_suffix(".png")
    if plot.exists():
        lines += [_link(plot, out_dir, f"{title}: recall vs IoU"), ""]
    return lines


def mask_layer_parameters(model_cfg: dict) -> list[dict]:
    """Parameters of the mask-prediction layers, counted on modules built as configured.

    One row per head (InstanceFCN: the last conv, with k² outputs; ~DeepMask: its two fc layers)
    for this run's width and for the paper's (512 channels, k = 5). The modules are built on
    the meta device: shapes without memory, so even the 53M fc layers cost nothing.
    """
    import torch

    from ifcn.model import build_model

    rows = []
    settings = [
        ("this run", model_cfg["head_channels"], model_cfg["k"]),
        ("paper setting", 512, 5),
    ]
    for setting, channels, k in settings:
        cfg = {**model_cfg, "pretrained": False, "head_channels": channels, "k": k}
        with torch.device("meta"):
            ours = build_model({**cfg, "head": "instancefcn"}).instance_branch
            theirs = build_model({**cfg, "head": "deepmask"}).mask_head
        layers = {
            f"InstanceFCN (k = {k})": [ours.scores],
            "~DeepMask": [theirs.fc, theirs.mask],
        }
        for head, modules in layers.items():
            rows.append(
                {
                    "setting": f"{setting}, {channels} channels",
                    "head": head,
                    "layers": " + ".join(_describe(m) for m in modules),
                    "weights": sum(m.weight.numel() for m in modules),
                    "biases": sum(m.bias.numel() for m in modules),
                }
            )
    return rows


def _describe(module) -> str:
    shape = tuple(module.weight.shape)
    if len(shape) == 4:
        return f"{shape[2]}×{shape[3]} conv {shape[1]}→{shape[0]}"
    return f"fc {shape[1]}→{shape[0]}"


def _parameters_section(model_cfg: dict) -> list[str]:
    rows = mask_layer_parameters(model_cfg)
    table = [
        [r["setting"], r["head"], r["layers"], f"{r['weights']:,}", f"{r['biases']:,}"]
        for r in rows
    ]
    ratios = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        ours, theirs = (r["weights"] + r["biases"] for r in rows if r["setting"] == setting)
        ratios.append(f"{setting}: ~DeepMask has {theirs / ours:,.0f}× the parameters")
    lines = ["## Mask-prediction parameters", ""]
    lines += [
        "Counted on the modules as `ifcn.model.build_model` builds them, for this run's width "
        "and for the paper's (Table 2's comparison: InstanceFCN's mask layer does not depend on "
        "the mask resolution, ~DeepMask's fc layers regress a 56×56 mask)."
    ]
    lines += [""] + _table(["setting", "head", "layers", "weights", "biases"], table) + [""]
    return lines + ["; ".join(ratios) + ".", ""]


def _pictures_section(pictures: list[Picture], out_dir: Path) -> list[str]:
    lines = ["## Pictures", ""]
    for picture in pictures:
        path = Path(picture.path).resolve()
        lines += [_link(path, out_dir, path.stem), "", picture.caption, ""]
    return lines


def provenance_section(ar: dict, benchmarks: pd.DataFrame | None = None) -> list[str]:
    """Which code, packages and inputs made this run, and how long its stages took."""
    record = run_provenance()
    versions = ", ".join(f"{name} {version}" for name, version in record["versions"].items())
    lines = [
        "## Provenance",
        "",
        f"Written {record['created']} by ifcn at commit `{record['commit']}` ({versions}). "
        "The run's effective settings: `config.yaml` beside this report; proposals.h5 records "
        "its own commit, versions and the SHA-256 of its checkpoint and image list.",
        "",
    ]
    inputs = ar.get("inputs") or {}
    if inputs:
        rows = [[f"`{path}`", f"`{digest}`"] for path, digest in inputs.items()]
        lines += ["Files the AR was computed from:", ""]
        lines += _table(["file", "SHA-256"], rows) + [""]
    if benchmarks is not None and len(benchmarks):
        total = float(benchmarks["seconds"].sum())
        shown = benchmarks.head(8)
        rows = [
            [f"`{job}`", f"{seconds / 60:.1f}"] for job, seconds in shown.itertuples(index=False)
        ]
        lines += [
            f"Run time: {total / 60:.1f} min of jobs ({len(benchmarks)} jobs; Snakemake's "
            "benchmark files, wall time per job, summed over jobs that ran in parallel too). "
            "The longest:",
            "",
        ]
        lines += _table(["job", "minutes"], rows) + [""]
    return lines


def _published_rows(reference: dict[str, tuple]) -> list[list[str]]:
    return [[name, *[f"{v:.1f}" for v in values]] for name, values in reference.items()]


def published_section() -> list[str]:
    """The paper's figures, labelled, apart from this run's: other data, backbone and budget."""
    ar_header = ["", "AR@10 (%)", "AR@100 (%)", "AR@1000 (%)"]
    lines = [
        f"## Published figures ({PUBLISHED})",
        "",
        "For reference only: the paper's numbers on PASCAL VOC 2012 val and COCO with a VGG-16 "
        "trained 40k iterations on 8 GPUs. They are not comparable with this run's figures "
        "above (other data, backbone and budget).",
        "",
        "Segment proposals (Tables 3 and 5):",
        "",
    ]
    lines += _table(ar_header, _published_rows({**paper.TABLE3_VOC, **paper.TABLE5_COCO}))
    lines += ["", "Relative positions k² (Table 1, VOC 2012 val):", ""]
    lines += _table(["variant", *ar_header[1:]], _published_rows(paper.TABLE1_K))
    lines += ["", "InstanceFCN vs ~DeepMask (Table 2, VOC 2012 val):", ""]
    lines += _table(["variant", *ar_header[1:]], _published_rows(paper.TABLE2_HEAD))
    lines += ["", "Instance segmentation (Table 4):", ""]
    lines += _table(["", "mAP@0.5 (%)", "mAP@0.7 (%)"], _published_rows(paper.TABLE4_MAP))
    published = ", ".join(f"{name} {value}" for name, value in paper.MASK_PARAMS.items())
    lines += ["", f"Mask-prediction parameters (§4): {published}.", ""]
    return lines


def build_report(
    config: dict,
    ar_path: str | Path,
    out: str | Path,
    segm_eval: str | Path | None = None,
    ablation_k: str | Path | None = None,
    ablation_head: str | Path | None = None,
    figures: str | Path | None = None,
    train_log: str | Path | None = None,
    loss_plot: str | Path | None = None,
    benchmarks: str | Path | None = None,
) -> str:
    """The Markdown text of the report (links relative to ``out``; ``loss_plot`` is linked,
    `ifcn.reporting.plots.plot_loss` draws it)."""
    out_dir = Path(out).resolve().parent
    ar_path = Path(ar_path).resolve()
    lines = _describe_run(config)
    lines += _ar_section(read_ar(ar_path), ar_path, out_dir)
    if train_log:
        plot = Path(loss_plot).resolve() if loss_plot else None
        lines += _training_section(read_training_log(train_log), plot, out_dir)
    if segm_eval:
        lines += _segm_section(read_segm_eval(segm_eval))
    dataset = config["data"]["dataset"]
    if ablation_k:
        lines += _ablation_section(
            "Ablation: relative positions k² (paper Table 1)",
            f"Each variant is this run's config with the settings shown, trained and evaluated "
            f"on `{dataset}` under the same budget; k = 1 is the plain FCN of Fig. 1 (one score "
            "map, so touching instances of one kind cannot be told apart).",
            Path(ablation_k).resolve(),
            out_dir,
        )
    if ablation_head:
        lines += _ablation_section(
            "Ablation: InstanceFCN vs ~DeepMask (paper Table 2)",
            f"Both heads on this run's backbone, trained on `{dataset}` under the same budget "
            "(iterations and scales) either on 224×224 crops or on full images, and tested "
            "fully convolutionally (~DeepMask's fc applied at every window: the sliding fc).",
            Path(ablation_head).resolve(),
            out_dir,
        )
    lines += _parameters_section(config["model"])
    if figures:
        lines += _pictures_section(read_figures_index(figures), out_dir)
    lines += provenance_section(
        read_ar(ar_path), read_benchmarks(benchmarks) if benchmarks else None
    )
    lines += published_section()
    return "\n".join(lines)
