"""`ifcn report`: results/<run>/report.md, assembled from the run's own output files.

Every figure of this run is read from its ar.json / segm_eval.json / ablation CSVs; the paper's
numbers appear beside them only as rows labelled "paper". Pictures are linked relative to the
report so the folder can be moved or published as a whole.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from ifcn import paper
from ifcn.config import load_config
from ifcn.errors import IfcnError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ifcn report", description=__doc__, add_help=add_help)
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("--ar", required=True, help="ar.json of the validation proposals")
    parser.add_argument("--segm-eval", help="segm_eval.json of the downstream classifier")
    parser.add_argument("--ablation-k", help="ablation_k.csv")
    parser.add_argument("--ablation-head", help="ablation_head.csv")
    parser.add_argument("--figures", nargs="*", default=[], help="PNG pictures to show")
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
    return "–" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ar_section(ar: dict, ar_path: Path, out_dir: Path, dataset: str) -> list[str]:
    ns = [key.split("@")[1] for key in ar if key.startswith("AR@")]
    header = ["proposals", *[f"AR@{n} (%)" for n in ns]]
    rows = [["this run", *[_pct(ar[f"AR@{n}"]) for n in ns]]]
    reference = paper.TABLE5_COCO if dataset.startswith("coco") else paper.TABLE3_VOC
    if ns == ["10", "100", "1000"]:
        rows += [[name, *[f"{v:.1f}" for v in values]] for name, values in reference.items()]
    lines = ["## Segment proposals", ""]
    lines += [
        f"Mask average recall over IoU 0.50:0.05:0.95 ({ar.get('matching', 'coco')} "
        f"matching) on {ar.get('num_images', '?')} images, {ar.get('num_gt', '?')} objects."
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
        lines += [f"![recall vs IoU]({os.path.relpath(plot, out_dir)})", ""]
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


def _ablation_section(title: str, path: Path, reference: dict[str, tuple]) -> list[str]:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise IfcnError("file not found", path) from None
    rows = []
    for _, row in frame.iterrows():
        rows.append([str(row["variant"]), *[f"{100 * row[c]:.1f}" for c in frame.columns[1:]]])
        if row["variant"] in reference:
            values = reference[row["variant"]]
            rows.append([f"{row['variant']} (paper, VOC)", *[f"{v:.1f}" for v in values]])
    header = ["variant", *[f"{c} (%)" for c in frame.columns[1:]]]
    return [f"## {title}", ""] + _table(header, rows) + [""]


def build_report(
    config: dict,
    ar_path: str | Path,
    out: str | Path,
    segm_eval: str | Path | None = None,
    ablation_k: str | Path | None = None,
    ablation_head: str | Path | None = None,
    figures: list[str | Path] = (),
) -> str:
    """The Markdown text of the report (links relative to ``out``)."""
    out_dir = Path(out).resolve().parent
    ar_path = Path(ar_path).resolve()
    model, train = config["model"], config["train"]
    lines = [
        f"# ifcn report: run `{config['run']}`",
        "",
        f"Dataset `{config['data']['dataset']}`; backbone `{model['backbone']}`, head "
        f"`{model['head']}`, k = {model['k']}, m = {model['m']}; {train['iters']} training "
        f"iterations at shorter sides {train['scales']}; inference at {config['infer']['scales']};"
        f" NMS IoU {config['nms']['iou']}, N = {config['nms']['top_n']}.",
        "",
    ]
    lines += _ar_section(_read_json(ar_path), ar_path, out_dir, config["data"]["dataset"])
    if segm_eval:
        lines += _segm_section(_read_json(segm_eval))
    if ablation_k:
        lines += _ablation_section(
            "Ablation: relative positions k²", Path(ablation_k), paper.TABLE1_K
        )
    if ablation_head:
        lines += _ablation_section(
            "Ablation: InstanceFCN vs ~DeepMask", Path(ablation_head), paper.TABLE2_HEAD
        )
    if figures:
        lines += ["## Pictures", ""]
        for figure in figures:
            path = Path(figure).resolve()
            if not path.exists():
                raise IfcnError("picture not found", path)
            lines += [f"![{path.stem}]({os.path.relpath(path, out_dir)})", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    text = build_report(
        config, args.ar, args.out, args.segm_eval, args.ablation_k, args.ablation_head, args.figures
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0
