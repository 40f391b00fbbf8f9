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
import contextlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ifcn import paper
from ifcn.ablation import VARIANTS
from ifcn.config import load_config
from ifcn.errors import IfcnError

# Fig. 8: each object's best proposal among the top FIG8_TOP_N; below MISSED_IOU it is missed.
FIG8_TOP_N = 100
MISSED_IOU = 0.5


@dataclass(frozen=True)
class Picture:
    """A PNG of the report and the sentence shown under it."""

    path: Path
    caption: str


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


def _gt_rles(images_json: Path) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    """Images by id and each image's non-crowd object masks as compressed RLE."""
    from pycocotools.coco import COCO

    from ifcn.infer import read_image_table

    table = read_image_table(images_json)
    data = _read_json(images_json)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    objects: dict[int, list[dict]] = {image_id: [] for image_id in table}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd") or ann.get("image_id") not in objects:
            continue
        try:
            rle = coco.annToRLE(ann)
        except (KeyError, TypeError, ValueError, IndexError):
            raise IfcnError(
                f"annotation {ann.get('id')}: unreadable segmentation", images_json
            ) from None
        if isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode()}
        objects[ann["image_id"]].append(rle)
    return table, objects


def pick_images(objects: dict[int, list], count: int) -> list[int]:
    """The first ``count`` image ids in sorted order that show objects (then any others)."""
    ids = sorted(objects)
    with_objects = [i for i in ids if objects[i]]
    chosen = (with_objects + [i for i in ids if not objects[i]])[:count]
    if len(chosen) < count:
        raise IfcnError(f"{count} pictures asked for, but only {len(ids)} validation images")
    return chosen


def best_proposals(gt_rles: list[dict], proposal_rles: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """For each object, the index of its best-IoU proposal and that IoU (-1 and 0: none)."""
    from pycocotools import mask as mask_utils

    if not gt_rles or not proposal_rles:
        return np.full(len(gt_rles), -1), np.zeros(len(gt_rles))
    ious = np.asarray(mask_utils.iou(proposal_rles, gt_rles, [0] * len(gt_rles)))
    ious = ious.reshape(len(proposal_rles), len(gt_rles))
    return ious.argmax(axis=0), ious.max(axis=0)


def draw_recall_picture(
    image: np.ndarray, gt_masks: np.ndarray, proposal_masks: np.ndarray, ious: np.ndarray
) -> np.ndarray:
    """Fig. 8: each object's best proposal tinted and labelled with its IoU; objects whose best
    IoU is below MISSED_IOU filled with white and outlined in red."""
    import cv2

    from ifcn.viz import draw_proposals

    missed = ious < MISSED_IOU
    out = image.astype(np.float32)
    thickness = max(1, round(min(image.shape[:2]) / 150))
    contours = []
    for mask in gt_masks[missed]:
        region = mask.astype(bool)
        out[region] = out[region] * 0.25 + 255 * 0.75
        found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contours += found
    out = out.clip(0, 255).astype(np.uint8)
    cv2.drawContours(out, contours, -1, (230, 0, 0), thickness)
    return draw_proposals(out, proposal_masks[~missed], ious[~missed])


def draw_pictures(
    config: dict,
    figures_dir: Path,
    count: int,
    images_json: Path,
    image_root: Path,
    proposals: Path | None = None,
    checkpoint: Path | None = None,
    device_name: str = "auto",
) -> list[Picture]:
    """Fig. 8 (with ``proposals``) and Fig. 5 (with ``checkpoint``, InstanceFCN head only) of
    the first ``count`` validation images: figures_dir/proposals-<i>.png, score_maps-<i>.png."""
    from ifcn.data.coco import load_image
    from ifcn.proposals_io import Proposals
    from ifcn.viz import save_png, score_map_picture

    table, objects = _gt_rles(images_json)
    chosen = pick_images(objects, count)
    model, device = None, None
    if checkpoint is not None and config["model"]["head"] == "instancefcn":
        from ifcn.distributed import resolve_device
        from ifcn.infer import load_model

        try:
            device = resolve_device(device_name)
        except RuntimeError as exc:
            raise IfcnError(str(exc)) from None
        model = load_model(config, checkpoint, device)
    reader = Proposals(proposals) if proposals is not None else None
    pictures: list[Picture] = []
    try:
        for position, image_id in enumerate(chosen, start=1):
            entry = table[image_id]
            image = load_image(image_root / entry["file_name"])
            if reader is not None:
                if image_id not in reader:
                    raise IfcnError(f"no proposals for image {image_id}", proposals)
                rles = reader.rles(image_id, FIG8_TOP_N)
                best, ious = best_proposals(objects[image_id], rles)
                found = _decode(rles, image.shape[:2])[np.clip(best, 0, None)]
                gt_masks = _decode(objects[image_id], image.shape[:2])
                picture = draw_recall_picture(image, gt_masks, found, ious)
                missed = int((ious < MISSED_IOU).sum())
                pictures.append(
                    Picture(
                        save_png(picture, figures_dir / f"proposals-{position}.png"),
                        f"Image {image_id} (`{entry['file_name']}`): the best of the top "
                        f"{FIG8_TOP_N} proposals for each of its {len(ious)} objects, labelled "
                        f"with its IoU; {missed} missed (best IoU < {MISSED_IOU}) in white with "
                        "a red outline, as in the paper's Fig. 8.",
                    )
                )
            if model is not None:
                short = min(image.shape[:2])
                scale = min(config["infer"]["scales"], key=lambda s: abs(s - short))
                picture = score_map_picture(
                    model, image, scale, config["infer"]["max_size"], 4, device
                )
                pictures.append(
                    Picture(
                        save_png(picture, figures_dir / f"score_maps-{position}.png"),
                        f"Image {image_id} at shorter side {scale}: the k² = {model.k**2} "
                        "instance-sensitive score maps, the four best windows after box NMS "
                        "and the instances assembled from the maps, as in the paper's Fig. 5.",
                    )
                )
    finally:
        if reader is not None:
            reader.close()
    return pictures


def _decode(rles: list[dict], size: tuple[int, int]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, *size), np.uint8)
    return np.moveaxis(mask_utils.decode(rles), 2, 0)


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
