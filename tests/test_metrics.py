"""The paper's metrics against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from mmnet.metrics import format_table, intersection_union, iou, summarize


def test_intersection_and_union_of_hand_drawn_masks():
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    target = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, :2, :2] = True  # 4 pixels
    target[0, 1:3, 1:3] = True  # 4 pixels, 1 shared
    target[1, 0, 0] = True  # an object the empty prediction misses
    intersection, union = intersection_union(pred, target)
    assert intersection.tolist() == [1, 0]
    assert union.tolist() == [7, 1]


def test_empty_prediction_empty_truth_and_both_empty():
    # Empty prediction, 5-pixel truth: 0. Empty truth, 2 predicted pixels: 0. Both empty: 1.
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    target[0, 0, :4], target[0, 1, 0] = True, True
    pred[1, 2, 2:4] = True
    intersection, union = intersection_union(pred, target)
    assert intersection.tolist() == [0, 0, 0] and union.tolist() == [5, 2, 0]
    assert iou(intersection, union).tolist() == [0.0, 0.0, 1.0]
    # A split of nothing but empty-and-empty expressions is exactly right by both measures.
    assert summarize([0, 0], [0, 0])["oIoU"] == 100.0 and summarize([0, 0], [0, 0])["mIoU"] == 100.0


def test_summary_of_four_expressions_worked_by_hand():
    # (I, U): (3, 4) -> 0.75; (0, 5) -> 0; (0, 0) -> 1; (0, 2) -> 0.
    metrics = summarize([3, 0, 0, 0], [4, 5, 0, 2])
    assert metrics["mIoU"] == pytest.approx(100 * (0.75 + 0 + 1 + 0) / 4)  # 43.75
    assert metrics["oIoU"] == pytest.approx(100 * 3 / 11)  # 27.27
    assert metrics["Pr@0.5"] == pytest.approx(50.0)  # 0.75 and 1
    assert metrics["Pr@0.6"] == pytest.approx(50.0)
    assert metrics["Pr@0.7"] == pytest.approx(50.0)
    assert metrics["Pr@0.8"] == pytest.approx(25.0)  # only 1
    assert metrics["Pr@0.9"] == pytest.approx(25.0)
    assert metrics["count"] == 4


def test_precision_counts_only_ious_above_the_threshold():
    metrics = summarize([1, 3], [2, 5])  # IoU exactly 0.5 and 0.6
    assert metrics["Pr@0.5"] == pytest.approx(50.0)
    assert metrics["Pr@0.6"] == pytest.approx(0.0)


def test_shapes_must_agree_and_splits_must_hold_expressions():
    with pytest.raises(ValueError, match="differ in shape"):
        intersection_union(torch.zeros(3, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="no expressions"):
        summarize([], [])


def test_table_lists_every_metric():
    table = format_table({"val": summarize([3], [4])})
    assert table.splitlines()[0].split() == ["split", "mIoU", "oIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "count"]
    assert table.splitlines()[1].split() == ["val", "75.00", "75.00", "100.00", "100.00", "100.00", "0.00", "0.00", "1"]
