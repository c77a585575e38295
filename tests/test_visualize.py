"""Figure-5 rows: one per expression, the best scored queries first, stacked into the demo's sheet."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmnet.visualize import CAPTION, GAP, TEXT, TILE, expression_panel, stack

WIDTH, HEIGHT = 80, 60  # fitted into a tile as 120 x 90


def row(scores, *, top_k=4, ground_truth=True, maps=None, sentence="the red circle") -> Image.Image:
    """A row for a white image whose query n lights it with the constant weight (n + 1) / N_q, so
    that a tile's brightness tells which query it shows."""
    count = len(scores)
    if maps is None:
        maps = [np.full((HEIGHT, WIDTH), (n + 1) / count, dtype=np.float32) for n in range(count)]
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[10:30, 20:50] = 1
    return expression_panel(
        Image.new("RGB", (WIDTH, HEIGHT), "white"),
        sentence,
        ground_truth=mask if ground_truth else None,
        probability=mask.astype(np.float32),
        threshold=0.35,
        query_probabilities=maps,
        query_scores=scores,
        iou=0.5,
        top_k=top_k,
    )


def centre_of_cell(panel: Image.Image, cell: int) -> int:
    """Red value at the centre of the picture in ``cell`` (0 is the expression's)."""
    left = TEXT + GAP + (cell - 1) * (TILE + GAP)
    return panel.getpixel((left + TILE // 2, CAPTION + 45))[0]


@pytest.mark.parametrize("top_k", [1, 4])
def test_a_row_holds_the_expression_image_truth_prediction_and_top_k_queries(top_k):
    scores = [0.1, 0.2, 0.3, 0.15, 0.05, 0.2]
    assert row(scores, top_k=top_k).size == (TEXT + (3 + top_k) * (TILE + GAP), TILE + CAPTION)
    assert row(scores, top_k=top_k, ground_truth=False).width == TEXT + (2 + top_k) * (TILE + GAP)


def test_queries_are_shown_best_scored_first():
    scores = [0.1, 0.4, 0.05, 0.3, 0.15]
    panel = row(scores, top_k=3)
    shown = [centre_of_cell(panel, 4 + i) for i in range(3)]
    expected = [round(255 * (0.25 + 0.75 * (n + 1) / len(scores))) for n in (1, 3, 4)]
    assert shown == pytest.approx(expected, abs=1)


def test_top_k_beyond_the_number_of_queries_shows_every_query():
    scores = [0.5, 0.2, 0.3]
    panel = row(scores, top_k=10)
    assert panel.width == TEXT + (3 + 3) * (TILE + GAP)
    assert np.array_equal(np.asarray(panel), np.asarray(row(scores, top_k=None)))


def test_without_the_multi_mask_projector_the_prediction_is_the_only_mask():
    one_mask = [np.ones((HEIGHT, WIDTH), dtype=np.float32)]  # query_masks is B x 1, the scores still N_q
    assert row([0.25] * 4, maps=one_mask).width == TEXT + 3 * (TILE + GAP)


def test_a_long_expression_wraps_inside_its_cell():
    sentence = "the small red circle just left of the big blue square " * 6
    panel = np.asarray(row([0.5, 0.5], sentence=sentence).convert("L"))
    assert panel.shape[1] == TEXT + 5 * (TILE + GAP)
    inked = np.flatnonzero((panel[:, :TEXT] < 128).any(axis=1))
    assert inked.max() - inked.min() > 0.8 * (TILE + CAPTION)  # many lines, down the cell's height
    assert (panel[:, TEXT : TEXT + GAP] == 255).all()  # and nothing runs into the image


def test_rows_stack_into_a_left_aligned_sheet():
    rows = [row([0.5, 0.5], top_k=1), row([0.5, 0.5], top_k=2)]
    sheet = stack(rows, gap=8)
    assert sheet.size == (rows[1].width, 2 * (TILE + CAPTION) + 8)
    assert np.array_equal(np.asarray(sheet)[: TILE + CAPTION, : rows[0].width], np.asarray(rows[0]))


def test_a_no_target_prediction_is_drawn_empty_and_the_probability_shown():
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[10:30, 20:50] = 1
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")

    def panel(probability, **no_target):
        return np.asarray(
            expression_panel(
                image, "the purple star", ground_truth=None, probability=probability, threshold=0.35,
                query_probabilities=[], query_scores=[0.5, 0.5], iou=1.0, **no_target,
            )
        )

    nothing = panel(mask.astype(np.float32), no_target_probability=0.93, no_target=True)
    kept = panel(mask.astype(np.float32), no_target_probability=0.07, no_target=False)
    empty = panel(np.zeros((HEIGHT, WIDTH), dtype=np.float32), no_target_probability=0.93, no_target=True)
    # Below the captions: the prediction's tile is that of an empty mask, dimmed all over.
    picture = slice(CAPTION, None)
    np.testing.assert_array_equal(nothing[picture], empty[picture])
    assert not np.array_equal(nothing[picture], kept[picture])
    # The captions differ: "nothing matches .93" against "IoU 100.0, none 0.07".
    assert not np.array_equal(nothing[:CAPTION], kept[:CAPTION])
