"""Window geometry and labelling pinned to the paper (§3.3) and DESIGN §4–§5."""

import pytest
import torch

from ifcn.windows import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    STRIDE,
    LabelRule,
    cell_grid,
    label_windows,
    mask_targets,
    sample_windows,
    top_left_of_cell,
    window_boxes,
    window_centres,
)

RULE = LabelRule()  # m = 21 at stride 8: 168-px windows, canonical 96 px


def test_window_is_21_cells_of_8_pixels_with_deepmask_canonical_size():
    assert STRIDE == 8
    assert RULE.window_side == 168
    assert RULE.canonical_size == pytest.approx(168 * 128 / 224)


@pytest.mark.parametrize("scale", [0.25, 2 / 3, 1.0, 1.5, 3.2])
def test_window_boxes_at_several_scales(scale):
    tops = torch.tensor([[0, 0], [-10, 4], [7, -3]])
    boxes = window_boxes(tops, 21, scale)
    expected = torch.tensor(
        [[0, 0, 168, 168], [32, -80, 200, 88], [-24, 56, 144, 224]], dtype=torch.float32
    )
    torch.testing.assert_close(boxes, expected / scale)


def test_objectness_cell_scores_the_window_centred_on_it():
    cells = torch.tensor([[10, 10], [0, 0], [3, 17]])
    tops = top_left_of_cell(cells, 21)
    assert tops.tolist() == [[0, 0], [-10, -10], [-7, 7]]
    centres = window_centres(tops, 21)
    # the centre of the window is the centre of its cell: ((x + 0.5)·s, (y + 0.5)·s)
    torch.testing.assert_close(centres, (cells.flip(1).float() + 0.5) * STRIDE)


def _label_one(box, iscrowd=False, cell=(20, 20), rule=RULE):
    tops = top_left_of_cell(torch.tensor([cell]), rule.m)
    labels, matched = label_windows(
        tops, torch.tensor([box], dtype=torch.float32), torch.tensor([iscrowd]), rule
    )
    return int(labels[0]), int(matched[0])


def _box(cx, cy, size):
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


CENTRE = (20 + 0.5) * STRIDE  # pixel centre of the window centred on cell (20, 20)


def test_centred_object_of_canonical_size_is_positive():
    assert _label_one(_box(CENTRE, CENTRE, 96)) == (POSITIVE, 0)


@pytest.mark.parametrize("shift", [16, -16])
def test_shift_within_16_px_is_positive(shift):
    assert _label_one(_box(CENTRE + shift, CENTRE, 96))[0] == POSITIVE
    assert _label_one(_box(CENTRE, CENTRE + shift, 96))[0] == POSITIVE


@pytest.mark.parametrize("shift", [49, -49, 60, 100])
def test_shift_beyond_48_px_is_negative(shift):
    assert _label_one(_box(CENTRE + shift, CENTRE, 96))[0] == NEGATIVE
    assert _label_one(_box(CENTRE, CENTRE - shift, 96))[0] == NEGATIVE


@pytest.mark.parametrize("factor", [2.0, 0.5, 2.5, 0.3])
def test_scale_off_by_2_to_the_1_is_negative(factor):
    assert _label_one(_box(CENTRE, CENTRE, 96 * factor))[0] == NEGATIVE


@pytest.mark.parametrize(
    "box",
    [
        _box(CENTRE + 30, CENTRE, 96),  # shifted 30 px: neither within 16 nor beyond 48
        _box(CENTRE, CENTRE, 96 * 1.5),  # scale 2^0.58: beyond 2^(1/4), within 2^1
        _box(CENTRE, CENTRE, 96 / 1.5),
        _box(CENTRE + 40, CENTRE - 20, 96 * 1.3),
    ],
)
def test_between_positive_and_negative_is_ignored(box):
    assert _label_one(box)[0] == IGNORE


def test_scale_within_2_to_the_quarter_is_positive():
    assert _label_one(_box(CENTRE, CENTRE, 96 * 2**0.24))[0] == POSITIVE
    assert _label_one(_box(CENTRE, CENTRE, 96 * 2**-0.24))[0] == POSITIVE


def test_crowd_is_never_positive_and_blocks_negatives():
    assert _label_one(_box(CENTRE, CENTRE, 96), iscrowd=True)[0] == IGNORE
    # a large crowd region around the window centre: ignore, not negative
    assert _label_one(_box(CENTRE, CENTRE, 500), iscrowd=True)[0] == IGNORE
    assert _label_one(_box(CENTRE, CENTRE, 500), iscrowd=False)[0] == NEGATIVE


def test_nearest_positive_instance_is_matched():
    tops = top_left_of_cell(torch.tensor([[20, 20]]), 21)
    boxes = torch.tensor([_box(CENTRE + 12, CENTRE, 96), _box(CENTRE - 3, CENTRE + 2, 100)])
    labels, matched = label_windows(tops, boxes, torch.tensor([False, False]), RULE)
    assert labels.tolist() == [POSITIVE] and matched.tolist() == [1]


def test_labels_over_a_whole_map():
    # one canonical object at the centre of a 336×336 image: positives exactly where the
    # window centre is within 16 px per axis, i.e. the 5×5 cells around (20, 20)
    tops = top_left_of_cell(cell_grid(42, 42), 21)
    labels, _ = label_windows(
        tops, torch.tensor([_box(CENTRE, CENTRE, 96)]), torch.tensor([False]), RULE
    )
    labels = labels.view(42, 42)
    positives = torch.nonzero(labels == POSITIVE)
    assert positives[:, 0].unique().tolist() == [18, 19, 20, 21, 22]
    assert positives[:, 1].unique().tolist() == [18, 19, 20, 21, 22]
    assert labels[20, 27] == NEGATIVE and labels[20, 26] == IGNORE  # 56 vs 48 px away


def test_sampling_keeps_at_most_half_positives():
    labels = torch.tensor([POSITIVE] * 300 + [NEGATIVE] * 1000 + [IGNORE] * 50, dtype=torch.int8)
    pos, neg = sample_windows(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert len(pos) == 128 and len(neg) == 128
    assert (labels[pos] == POSITIVE).all() and (labels[neg] == NEGATIVE).all()
    few = torch.tensor([POSITIVE] * 10 + [NEGATIVE] * 1000, dtype=torch.int8)
    pos, neg = sample_windows(few, 256, 0.5, torch.Generator().manual_seed(0))
    assert len(pos) == 10 and len(neg) == 246


def test_mask_target_lines_up_with_assembled_cells():
    masks = torch.zeros(2, 200, 240, dtype=torch.uint8)
    masks[1, 40:80, 64:128] = 1  # cells y 5..9, x 8..15
    tops = torch.tensor([[0, 0], [5, 8], [-3, -4]])
    targets, valid = mask_targets(masks, torch.tensor([1, 1, 1]), tops, 21)
    assert targets[0, 5:10, 8:16].all() and targets[0].sum() == 5 * 8
    assert targets[1, 0:5, 0:8].all() and targets[1].sum() == 40
    assert valid[0].all()
    # rows 5+20 = cell 25 covers pixels 200..208 of a 200-px image: outside
    assert valid[1, :20].all() and not valid[1, 20].any()
    # a window hanging over the top-left corner: its first rows and columns are outside
    assert not valid[2, :3].any() and not valid[2, :, :4].any() and valid[2, 3:, 4:].all()
    assert targets[2, 8:13, 12:20].all() and targets[2].sum() == 40
