import numpy as np
import pytest

from mmnet.data.masks import decode_rle, segmentation_to_rle, uncompressed_rle


def test_uncompressed_rle_runs_go_down_the_columns():
    mask = np.zeros((4, 3), np.uint8)
    mask[1:3, 1] = 1
    # Column 0 and the first row of column 1 are background (5), two foreground, the rest (5) background.
    assert uncompressed_rle(mask) == {"size": [4, 3], "counts": [5, 2, 5]}


def test_uncompressed_rle_of_a_mask_starting_with_foreground_opens_with_an_empty_run():
    mask = np.zeros((2, 2), np.uint8)
    mask[0, 0] = 1
    assert uncompressed_rle(mask)["counts"] == [0, 1, 3]


def test_uncompressed_rle_decodes_back_to_the_mask():
    mask = (np.random.default_rng(0).random((9, 7)) > 0.5).astype(np.uint8)
    counts = segmentation_to_rle(uncompressed_rle(mask), height=9, width=7)
    np.testing.assert_array_equal(decode_rle(counts, height=9, width=7), mask)


def test_two_point_polygons_are_dropped_not_read_as_boxes():
    square = [1, 1, 4, 1, 4, 4, 1, 4]
    with_line = segmentation_to_rle([[0, 0, 5, 5], square], height=6, width=6)
    assert with_line == segmentation_to_rle([square], height=6, width=6)
    assert decode_rle(with_line, height=6, width=6).sum() == 9
    with pytest.raises(ValueError, match="three or more points"):
        segmentation_to_rle([[0, 0, 5, 5]], height=6, width=6)


@pytest.mark.parametrize(
    "segmentation, reason",
    [
        ({"counts": [10, 3], "size": [3, 4]}, "12 pixels"),
        ({"counts": [20], "size": [5, 4]}, "differs from the image size"),
        ([[1, 2, 3]], "flat list of x, y"),
        ("polygon", "neither"),
    ],
)
def test_malformed_segmentations_say_why(segmentation, reason):
    with pytest.raises(ValueError, match=reason):
        segmentation_to_rle(segmentation, height=3, width=4)
