"""The classifier learns the synthetic categories from oracle proposals (paper Table 4's setting).

Proposals are the val GT masks jittered (dilated, eroded, shifted: mostly mask IoU ≥ 0.5), hard
negatives (copies shifted by half their size, slivers) and random blobs, with random scores.
Chance level: the same proposals through the same NMS and COCOeval, each class scored by an
independent uniform random number (a classifier that knows nothing), averaged over 5 draws.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ifcn.classify.evaluation import evaluate_segm
from ifcn.classify.prediction import select_detections
from ifcn.cli import main as cli_main
from ifcn.proposals.format import Proposals
from tests.classify.oracle import classify_config


def chance_map(gt_json, proposals_path, out, draws: int = 5) -> float:
    """mAP@0.5 of uniformly random class scores on the same proposals, NMS and evaluation."""
    images = json.loads(gt_json.read_text())["images"]
    values = []
    with Proposals(proposals_path) as proposals:
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            results = []
            for image in images:
                found = proposals.get(image["id"])
                rles = found.coco_rles()
                probs = rng.random((len(rles), 6))
                for i, c, score in select_detections(probs, rles, 0.001, 0.3, 100):
                    counts = found.rles[i].decode()
                    results.append(
                        {
                            "image_id": image["id"],
                            "category_id": c,
                            "segmentation": {"size": rles[i]["size"], "counts": counts},
                            "score": score,
                        }
                    )
            out.write_text(json.dumps(results))
            values.append(evaluate_segm(gt_json, out, "coco")["mAP@0.5"])
    return float(np.mean(values))


@pytest.mark.slow
def test_classifier_learns_the_synthetic_categories(tmp_path, oracle_data):
    config = classify_config(
        tmp_path, oracle_data, iters=500, lr=0.01, lr_step=0.6, log_period=50,
        checkpoint_period=250,
    )  # fmt: skip
    run, data = tmp_path / "run", oracle_data
    assert cli_main([
        "classify", "train", "--config", str(config), "--gt", str(data / "train.json"),
        "--proposals", str(data / "train_proposals.h5"), "--out", str(run), "--device", "cpu",
    ]) == 0  # fmt: skip
    segm = tmp_path / "segm.json"
    assert cli_main([
        "classify", "predict", "--checkpoint", str(run / "model_final.pt"),
        "--proposals", str(data / "val_proposals.h5"), "--images", str(data / "val.json"),
        "--device", "cpu", "--out", str(segm),
    ]) == 0  # fmt: skip
    evaluated = tmp_path / "segm_eval.json"
    assert cli_main([
        "classify", "evaluate", "--gt", str(data / "val.json"), "--results", str(segm),
        "--out", str(evaluated),
    ]) == 0  # fmt: skip
    summary = json.loads(evaluated.read_text())
    chance = chance_map(data / "val.json", data / "val_proposals.h5", tmp_path / "random.json")
    figures = f"mAP@0.5 {summary['mAP@0.5']:.3f}, mAP@0.7 {summary['mAP@0.7']:.3f}, "
    figures += f"chance mAP@0.5 {chance:.3f}"
    print(figures)
    assert 0.05 < chance < 0.25, figures
    assert summary["mAP@0.5"] > max(3 * chance, chance + 0.25), figures
    assert summary["mAP@0.7"] > 2 * chance, figures
