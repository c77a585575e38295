import numpy as np
import pytest
from pycocotools import mask as coco_mask

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


def test_compressed_rle_is_read_as_pycocotools_writes_it():
    # Long runs take several 5-bit groups and, from the fourth run on, are differences that may be negative.
    mask = np.zeros((60, 50), np.uint8)
    mask[3:57, 2:5] = 1
    mask[10:12, 30:49] = 1
    mask[40, 45] = 1
    counts = coco_mask.encode(np.asfortranarray(mask))["counts"].decode("ascii")
    assert segmentation_to_rle({"counts": counts, "size": [60, 50]}, height=60, width=50) == counts
    assert segmentation_to_rle({"counts": counts.encode("ascii"), "size": [60, 50]}, height=60, width=50) == counts


@pytest.mark.parametrize(
    "counts, reason",
    [
        ("", "12 pixels"),  # pycocotools would decode all 12 pixels from uninitialised memory
        ("0", "12 pixels"),
        ("1", "12 pixels"),
        ("52", "12 pixels"),  # 5 + 2 runs: 7 pixels
        ("4:", "12 pixels"),  # 4 + 10 runs overshoot: pycocotools would write past the mask
        ("o", "end inside a run"),
        ("4\x7f", "outside '0'..'o'"),
        ("49O", "non-negative"),  # runs 4, 9, -1: twelve pixels, one run negative
    ],
)
def test_malformed_compressed_rle_is_refused(counts, reason):
    with pytest.raises(ValueError, match=reason):
        segmentation_to_rle({"counts": counts, "size": [3, 4]}, height=3, width=4)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e9])
def test_polygon_far_off_the_image_is_refused(value):
    with pytest.raises(ValueError, match="between -12 and 12"):
        segmentation_to_rle([[1, 1, value, 1, 4, 4]], height=6, width=5)
