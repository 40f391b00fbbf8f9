"""Plots from plain data, written through one atomic PNG writer, drawn in the Plotter's process
when a command asks it to."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from ifcn.errors import IfcnError
from ifcn.reporting.plots import Plotter, plot_ablation, plot_loss, plot_recall_iou, save_png

IOUS = np.linspace(0.5, 1.0, 11)


def _recall_iou(path):
    recall = {10: np.linspace(0.6, 0.0, 11), 100: np.full(11, -1.0)}  # -1: no GT
    return (IOUS, recall, {10: 0.3, 100: -1.0}, "Recall vs IoU", path)


def _ar(scale: float) -> dict:
    return {
        "AR@10": 0.2 * scale,
        "AR@100": None,
        "iou_thresholds": IOUS[:10].tolist(),
        "recall": {"10": [scale * (1 - t) for t in IOUS[:10]], "100": [None] * 10},
    }


def _size(path) -> tuple[int, int]:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image.shape[1], image.shape[0]


def test_each_plot_is_a_png_of_its_figure_size(tmp_path):
    assert _size(plot_recall_iou(*_recall_iou(tmp_path / "recall.png"))) == (600, 480)
    ablation = plot_ablation([_ar(1.0), _ar(0.5)], ["k=5", "k=3"], tmp_path / "a" / "ab.png")
    assert _size(ablation) == (int(4.2 * 2 * 110), int(3.8 * 110))
    log = pd.DataFrame({"iteration": [10, 20, 30], "loss": [3.0, 2.0, 1.5], "loss_mask": [1, 2, 1]})
    assert _size(plot_loss(log, tmp_path / "loss.png")) == (int(6.4 * 110), int(3.6 * 110))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "ab.png", "loss.png", "recall.png"]


def test_save_png_writes_rgb_arrays_as_pictures(tmp_path):
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0] = 255  # red
    path = save_png(image, tmp_path / "red.png")
    assert cv2.imread(str(path))[0, 0].tolist() == [0, 0, 255]  # OpenCV reads BGR


def test_the_plotter_draws_in_its_process_and_raises_its_errors(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    with Plotter() as plotter:
        plotter.draw(plot_recall_iou, *_recall_iou(tmp_path / "recall.png"))
        with pytest.raises(IfcnError, match="is a folder"):
            plotter.draw(plot_recall_iou, *_recall_iou(folder))
    assert _size(tmp_path / "recall.png") == (600, 480)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recall.png", "taken"]
