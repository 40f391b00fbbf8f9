"""`ifcn report`: results/<run>/report.md, assembled from the run's own output files.

Every figure of this run is read from its ar.json / segm_eval.json / ablation CSVs, and the
mask-head parameter counts from modules built as the config describes; the paper's numbers
appear beside them only labelled "paper". Given the trained model and the validation proposals,
the report also draws its pictures (PNGs under results/<run>/figures/): for a few validation
images, the best proposal of each object with the missed objects outlined (the paper's Fig. 8)
and the k² instance-sensitive score maps with assembled instances (Fig. 5). Pictures are
linked relative to the report so the folder can be moved or published as a whole.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import pandas as pd

from ifcn import paper
from ifcn.config import load_config
from ifcn.errors import IfcnError
from ifcn.pictures import Picture, draw_pictures
from ifcn.variants import VARIANTS


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn report", description=__doc__, add_help=add_help)
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--ar", required=True, help="ar.json of the validation proposals")
    parser.add_argument("--segm-eval", help="segm_eval.json of the downstream classifier")
    parser.add_argument("--ablation-k", help="ablation_k.csv")
    parser.add_argument("--ablation-head", help="ablation_head.csv")
    parser.add_argument("--figures", nargs="*", default=[], help="PNG pictures to show")
    parser.add_argument("--proposals", help="proposals.h5 of the validation images (Fig. 8)")
    parser.add_argument("--checkpoint", help="model_final.pt, for the score maps (Fig. 5)")
    parser.add_argument("--images", help="COCO JSON of the validation images (with --proposals)")
    parser.add_argument("--image-root", help="folder of the images (default: data.val_images)")
    parser.add_argument(
        "--pictures", type=int, help="validation images drawn (default: report.pictures)"
    )
    parser.add_argument("--figures-dir", help="folder of the drawn PNGs (default: figures/)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", required=True, help="report.md to write")
    return parser


def _read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except json.JSONDecodeError as exc:
        raise IfcnError(f"not valid JSON ({exc})", path) from None


def _pct(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _link(path: Path, out_dir: Path, alt: str) -> str:
    return f"![{alt}]({Path(os.path.relpath(path, out_dir)).as_posix()})"


def _ar_section(ar: dict, ar_path: Path, out_dir: Path, dataset: str) -> list[str]:
    ns = [key.split("@")[1] for key in ar if key.startswith("AR@")]
    header = ["proposals", *[f"AR@{n} (%)" for n in ns]]
    rows = [["this run", *[_pct(ar[f"AR@{n}"]) for n in ns]]]
    reference = paper.TABLE5_COCO if dataset.startswith("coco") else paper.TABLE3_VOC
    if ns == ["10", "100", "1000"]:
        rows += [[name, *[f"{v:.1f}" for v in values]] for name, values in reference.items()]
    lines = ["## Segment proposals", ""]
    num_gt = ar.get("num_gt", "?")
    if isinstance(num_gt, dict):  # per area range; "all" counts every object
        num_gt = num_gt.get("all", "?")
    lines += [
        f"Mask average recall over IoU 0.50:0.05:0.95 ({ar.get('matching', 'coco')} "
        f"matching) on {ar.get('num_images', '?')} images, {num_gt} objects."
    ]
    lines += [""] + _table(header, rows) + [""]
    by_area = ar.get("by_area", {})
    if by_area:
        area_rows = [[area, *[_pct(values.get(n)) for n in ns]] for area, values in by_area.items()]
        lines += ["By object size (COCO area limits):", ""]
        lines += _table(["area", *[f"AR@{n} (%)" for n in ns]], area_rows) + [""]
    plot = ar_path.with_name("recall_iou.png")
    if plot.exists():
        lines += ["Recall against IoU (as the paper's Fig. 6/7):", ""]
        lines += [_link(plot, out_dir, "recall vs IoU"), ""]
    return lines


def _segm_section(segm: dict) -> list[str]:
    lines = ["## Instance segmentation (downstream classifier)", ""]
    rows = [["this run", _pct(segm["mAP@0.5"]), _pct(segm["mAP@0.7"])]]
    rows += [[name, f"{a:.1f}", f"{b:.1f}"] for name, (a, b) in paper.TABLE4_MAP.items()]
    lines += _table(["classifier", "mAP@0.5 (%)", "mAP@0.7 (%)"], rows) + [""]
    per_category = segm.get("per_category", [])
    if per_category:
        cat_rows = [
            [str(c.get("name", c["category_id"])), _pct(c.get("AP@0.5")), _pct(c.get("AP@0.7"))]
            for c in per_category
        ]
        lines += _table(["category", "AP@0.5 (%)", "AP@0.7 (%)"], cat_rows) + [""]
    return lines


def _settings_text(variant: str) -> str:
    settings = VARIANTS.get(variant)
    if settings is None:
        return ""
    return ", ".join(
        f"{key}={'null' if value is None else value}" for key, value in settings.items()
    )


def _ablation_section(
    title: str, intro: str, path: Path, out_dir: Path, reference: dict[str, tuple]
) -> list[str]:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise IfcnError(f"not a readable CSV ({exc})", path) from None
    columns = [c for c in frame.columns if str(c).startswith("AR@")]
    if "variant" not in frame.columns or not columns:
        raise IfcnError("an ablation table needs a variant column and AR@N columns", path)
    header = ["variant", *[f"{c} (%)" for c in columns], "paper, VOC 2012 val (%)", "settings"]
    rows = []
    for _, row in frame.iterrows():
        name = str(row["variant"])
        published = reference.get(name)
        cited = " / ".join(f"{v:.1f}" for v in published) if published else "–"
        ours = [_pct(float(row[c])) for c in columns]
        rows.append([name, *ours, cited, _settings_text(name)])
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


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e4 else str(count)


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
    published = ", ".join(f"{name} {value}" for name, value in paper.MASK_PARAMS.items())
    lines = ["## Mask-prediction parameters", ""]
    lines += [
        "Counted on the modules as `ifcn.model.build_model` builds them (paper Table 2's "
        "comparison: InstanceFCN's mask layer does not depend on the mask resolution, "
        "~DeepMask's fc layers regress a 56×56 mask)."
    ]
    lines += [""] + _table(["setting", "head", "layers", "weights", "biases"], table) + [""]
    lines += ["; ".join(ratios) + f". Paper (published): {published}.", ""]
    return lines


def build_report(
    config: dict,
    ar_path: str | Path,
    out: str | Path,
    segm_eval: str | Path | None = None,
    ablation_k: str | Path | None = None,
    ablation_head: str | Path | None = None,
    figures: list[str | Path] = (),
    pictures: list[Picture] = (),
) -> str:
    """The Markdown text of the report (links relative to ``out``)."""
    out_dir = Path(out).resolve().parent
    ar_path = Path(ar_path).resolve()
    model, train = config["model"], config["train"]
    crop = train.get("crop")
    lines = [
        f"# ifcn report: run `{config['run']}`",
        "",
        f"Dataset `{config['data']['dataset']}`; backbone `{model['backbone']}`, head "
        f"`{model['head']}`, k = {model['k']}, m = {model['m']}; {train['iters']} training "
        f"iterations at shorter sides {train['scales']}"
        f"{f' on {crop}×{crop} crops' if crop else ''}; inference at "
        f"{config['infer']['scales']}; NMS IoU {config['nms']['iou']}, N = "
        f"{config['nms']['top_n']}. Rows labelled paper are the published figures of "
        "InstanceFCN (ECCV 2016), for reference only: other data, other backbone.",
        "",
    ]
    lines += _ar_section(_read_json(ar_path), ar_path, out_dir, config["data"]["dataset"])
    if segm_eval:
        lines += _segm_section(_read_json(segm_eval))
    dataset = config["data"]["dataset"]
    if ablation_k:
        lines += _ablation_section(
            "Ablation: relative positions k² (paper Table 1)",
            f"Each variant is this run's config with the settings shown, trained and evaluated "
            f"on `{dataset}` under the same budget; k = 1 is the plain FCN of Fig. 1 (one score "
            "map, so touching instances of one kind cannot be told apart).",
            Path(ablation_k).resolve(),
            out_dir,
            paper.TABLE1_K,
        )
    if ablation_head:
        lines += _ablation_section(
            "Ablation: InstanceFCN vs ~DeepMask (paper Table 2)",
            f"Both heads on this run's backbone, trained on `{dataset}` under the same budget "
            "(iterations and scales) either on 224×224 crops or on full images, and tested "
            "fully convolutionally (~DeepMask's fc applied at every window: the sliding fc).",
            Path(ablation_head).resolve(),
            out_dir,
            paper.TABLE2_HEAD,
        )
    lines += _parameters_section(model)
    if figures or pictures:
        lines += ["## Pictures", ""]
        for picture in pictures:
            path = Path(picture.path).resolve()
            lines += [_link(path, out_dir, path.stem), "", picture.caption, ""]
        for figure in figures:
            path = Path(figure).resolve()
            if not path.exists():
                raise IfcnError("picture not found", path)
            lines += [_link(path, out_dir, path.stem), ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    out = Path(args.out)
    pictures: list[Picture] = []
    if args.proposals or args.checkpoint:
        if not args.images:
            raise IfcnError("--proposals and --checkpoint need --images (the validation JSON)")
        count = config["report"]["pictures"] if args.pictures is None else args.pictures
        pictures = draw_pictures(
            config,
            Path(args.figures_dir) if args.figures_dir else out.parent / "figures",
            count,
            Path(args.images),
            Path(args.image_root or config["data"]["val_images"]),
            Path(args.proposals) if args.proposals else None,
            Path(args.checkpoint) if args.checkpoint else None,
            args.device,
        )
    text = build_report(
        config,
        args.ar,
        args.out,
        args.segm_eval,
        args.ablation_k,
        args.ablation_head,
        args.figures,
        pictures,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0
