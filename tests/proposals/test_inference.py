"""Multi-scale inference (paper §3.3 "Inference", DESIGN §6): geometry end to end, ranking
before assembling, shards, and the CLI's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import cli
from ifcn.assemble import assemble_dense
from ifcn.data.image import image_tensor
from ifcn.model import build_model
from ifcn.proposals.candidates import Candidates, ImageCandidates
from ifcn.proposals.format import Proposals
from ifcn.proposals.inference import infer_image, run_inference
from ifcn.proposals.sharding import shard_ids
from ifcn.proposals.suppression import nms_image, run_nms
from ifcn.provenance import file_sha256
from ifcn.training.checkpoint import save_atomic
from ifcn.windows import STRIDE, rank_windows, window_boxes
from tests.configs import settings
from tests.proposals.hand import HandCandidates, OracleFCN
from tests.proposals.runs import small_config, write_images


def _touching_squares() -> np.ndarray:
    """Two same-colour 96-px squares side by side in a 192×256 image, on a 16-px grid."""
    masks = np.zeros((2, 192, 256), dtype=np.uint8)
    masks[0, 48:144, 32:128] = 1
    masks[1, 48:144, 128:224] = 1
    return masks


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_oracle_score_maps_give_the_instances_through_infer_and_nms(tmp_path):
    masks = _touching_squares()
    truths = masks.astype(bool)
    image = np.full((192, 256, 3), 90, dtype=np.uint8)
    image[truths.any(0)] = (200, 40, 40)  # one colour for both: a semantic FCN could not split them
    json_path, root = write_images(tmp_path, {7: image})
    oracle = OracleFCN(masks)
    scales = [96, 144, 192]  # 0.5 and 1 align the squares with the cells, 0.75 does not
    infer_cfg = {"scales": scales, "max_size": None, "pre_nms_topk": 40, "workers": 0}
    attrs = {"config": "{}", "checkpoint_sha256": "oracle", "dataset": str(json_path),
             "scales": scales, "k": 5, "m": 21, "head": "instancefcn", "shard": "0/1"}  # fmt: skip
    table = {7: {"file_name": "0007.png", "height": 192, "width": 256}}
    candidates = tmp_path / "candidates.h5"
    run_inference(oracle, table, root, candidates, attrs, infer_cfg, "cpu", show_progress=False)
    proposals_path = tmp_path / "proposals.h5"
    run_nms(
        candidates,
        proposals_path,
        settings("nms", iou=0.8, top_n=20),
        workers=1,
        show_progress=False,
    )

    with Proposals(proposals_path) as proposals:
        found = proposals.masks(7).astype(bool)
        boxes = proposals.boxes(7)
        rles = proposals.rles(7)
    for truth in truths:
        assert max(_iou(truth, mask) for mask in found) >= 0.9
    # the two best proposals are the two instances, and every box is its mask's tight box
    assert all(max(_iou(t, f) for t in truths) >= 0.98 for f in found[:2])
    x, y, w, h = mask_utils.toBbox(rles).T
    np.testing.assert_array_equal(boxes, np.stack([x, y, x + w, y + h], 1))

    # every scale on its own lands on the instances' pixels (NMS above keeps one scale's copy)
    with Candidates(candidates) as read:
        record = read.get(7)
    for index in range(len(scales)):
        rows = record.scale == index
        alone = HandCandidates(7, "0007.png", 192, 256, record.masks[rows], record.boxes[rows],
                               record.objectness[rows], record.scale[rows])  # fmt: skip
        result = nms_image(alone, settings("nms", iou=0.8, top_n=20))
        decoded = mask_utils.decode([{"size": [192, 256], "counts": c} for c in result["rles"]])
        for truth in truths:
            best = max(_iou(truth, decoded[:, :, j].astype(bool)) for j in range(decoded.shape[2]))
            assert best >= (0.99 if scales[index] != 144 else 0.9), (scales[index], best)


def test_ranking_before_assembling_equals_dense_assembling_then_selection():
    torch.manual_seed(0)
    model = build_model({"backbone": "tiny", "k": 3, "m": 9, "head_channels": 8}).eval()
    with torch.no_grad():  # spread the logits so that ranking and masks are not all ties
        model.objectness_branch.logit.weight.normal_(0, 1.0)
        model.instance_branch.scores.weight.normal_(0, 1.0)
    image = (np.random.default_rng(0).random((61, 83, 3)) * 255).astype(np.uint8)
    found = ImageCandidates(1, "a", 61, 83, **infer_image(model, image, [61], 9, 3, None, 25))

    with torch.no_grad():
        out = model(image_tensor(image))
    dense = assemble_dense(out["scores"][0], 9, fill=float("-inf")).sigmoid()  # [h, w, m, m]
    logits = out["objectness"][0, 0]
    order = logits.flatten().argsort(descending=True)[:25]
    h, w = logits.shape
    ys, xs = order // w, order % w
    # the stored score maps are float16 logits: the masks agree up to that rounding
    np.testing.assert_allclose(found.masks, dense[ys, xs].numpy(), atol=2e-3)
    np.testing.assert_array_equal(found.objectness, logits[ys, xs].numpy())
    tops = torch.stack([ys, xs], 1) - 9 // 2
    np.testing.assert_array_equal(found.boxes, window_boxes(tops, 9, 1.0).numpy())
    assert (found.scale == 0).all()
    # and exactly the dense assembling of the maps as stored
    maps = torch.from_numpy(found.maps[0]).float()
    stored = assemble_dense(maps, 9, fill=float("-inf")).sigmoid()[ys, xs].half().numpy()
    np.testing.assert_array_equal(found.masks, stored)


def test_the_deepmask_head_stores_its_own_mask_side():
    torch.manual_seed(0)
    model = build_model({"backbone": "tiny", "head": "deepmask", "m": 7, "head_channels": 8})
    image = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    found = infer_image(model.eval(), image, [40], 7, None, None, 4)
    assert found["stored_masks"].shape == (4, 56, 56) and "maps" not in found
    result = nms_image(ImageCandidates(1, "a", 40, 48, **found), settings("nms", top_n=2))
    assert len(result["rles"]) <= 2


def test_rank_windows_keeps_all_cells_of_a_small_map():
    tops, logits = rank_windows(torch.arange(6.0).reshape(2, 3), m=21, topk=100)
    assert len(tops) == 6 and logits.tolist() == [5, 4, 3, 2, 1, 0]
    assert tops[0].tolist() == [1 - 10, 2 - 10]


def test_windows_of_each_scale_have_boxes_in_original_pixels():
    oracle = OracleFCN(_touching_squares(), k=3, m=7)
    image = np.zeros((192, 256, 3), dtype=np.uint8)
    found = infer_image(oracle, image, [96, 192, 288], 7, 3, None, 5)
    record = ImageCandidates(1, "a", 192, 256, **found)
    sides = record.boxes[:, 2] - record.boxes[:, 0]
    for index, scale in enumerate([0.5, 1.0, 1.5]):
        np.testing.assert_allclose(sides[record.scale == index], 7 * STRIDE / scale, rtol=1e-6)
    assert record.masks.dtype == np.float16 and record.masks.shape[1:] == (7, 7)
    assert [m.shape for m in found["maps"]] == [(9, 12, 16), (9, 24, 32), (9, 36, 48)]


def test_shards_are_contiguous_chunks_of_the_sorted_ids():
    ids = [9, 3, 5, 1, 7]
    chunks = [shard_ids(ids, i, 3) for i in range(3)]
    assert chunks == [[1], [3, 5], [7, 9]]
    assert sum(chunks, []) == sorted(ids)


# --- the command line --------------------------------------------------------------------------


def test_cli_infer_writes_shards_that_merge_and_pass_nms(tmp_path, small_run):
    json_path, config_path, checkpoint = small_run
    base = ["infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
            "--images", str(json_path), "--device", "cpu"]  # fmt: skip
    for shard in ("0/2", "1/2"):
        out = tmp_path / f"cand-{shard[0]}.h5"
        assert cli.main([*base, "--shard", shard, "--out", str(out)]) == 0
    with Candidates(tmp_path / "cand-0.h5") as first, Candidates(tmp_path / "cand-1.h5") as second:
        assert first.image_ids.tolist() == [2] and second.image_ids.tolist() == [5, 11]
        attrs = second.attrs
        assert attrs["shard"] == "1/2" and attrs["k"] == 3 and attrs["m"] == 9
        assert attrs["scales"] == [40, 64] and attrs["objectness"] == "logit"
        assert (
            attrs["config"]["model"]["head_channels"] == 8 and len(attrs["checkpoint_sha256"]) == 64
        )
        # the 20×30 image still gives windows (its feature map is smaller than one window)
        assert first.read(0).masks.shape[1:] == (9, 9) and len(first.read(0)) > 0
    merged = tmp_path / "candidates.h5"
    parts = [str(tmp_path / "cand-1.h5"), str(tmp_path / "cand-0.h5")]
    assert cli.main(["merge", "--inputs", *parts, "--out", str(merged)]) == 0
    proposals = tmp_path / "proposals.h5"
    assert cli.main(["nms", "--candidates", str(merged), "--out", str(proposals),
                     "--top-n", "5", "--workers", "2"]) == 0  # fmt: skip
    with Proposals(proposals) as read:
        assert read.image_ids.tolist() == [2, 5, 11]
        assert all(0 < n <= 5 for n in read.counts)
        attrs = read.attrs
    assert attrs["dataset"] == str(json_path) and attrs["k"] == 3
    # provenance: which code, which packages, which images
    assert attrs["dataset_sha256"] == file_sha256(json_path)
    assert attrs["commit"] and json.loads(attrs["versions"])["torch"]


@pytest.mark.parametrize("change", [{"k": 5}, {"backbone": "resnet18"}])
def test_cli_infer_refuses_a_checkpoint_of_another_model(tmp_path, small_run, capsys, change):
    json_path, config_path, _ = small_run
    _, other = small_config(tmp_path)
    other["model"].update(change)
    state = {"model": {}, "config": other, "iteration": 0}
    checkpoint = save_atomic(state, tmp_path / "other.pt")
    out = tmp_path / "candidates.h5"
    code = cli.main(["infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
                     "--images", str(json_path), "--device", "cpu", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists()
    assert len(err.splitlines()) == 1 and str(checkpoint) in err
    assert f"model.{next(iter(change))}" in err
    assert not list(tmp_path.glob(".candidates.h5*"))


def test_cli_infer_names_a_missing_image_and_leaves_no_output(tmp_path, small_run, capsys):
    json_path, config_path, checkpoint = small_run
    (tmp_path / "images" / "0011.png").unlink()
    out = tmp_path / "candidates.h5"
    code = cli.main(["infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
                     "--images", str(json_path), "--device", "cpu", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists() and not list(tmp_path.glob(".candidates.h5*"))
    assert len(err.splitlines()) == 1 and "0011.png" in err and "not found" in err


def test_cli_infer_names_an_image_of_the_wrong_size(tmp_path, small_run, capsys):
    json_path, config_path, checkpoint = small_run
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "0005.png")
    out = tmp_path / "candidates.h5"
    code = cli.main(["infer", "--config", str(config_path), "--checkpoint", str(checkpoint),
                     "--images", str(json_path), "--device", "cpu", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists() and "0005.png" in err and "differs" in err
