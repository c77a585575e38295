import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from mmnet.data.transforms import Letterbox, letterbox_geometry, to_original

MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)


@pytest.mark.parametrize(
    "height, width, size, expected",
    [
        # 640 x 480 COCO image into 480: scale 0.75, 480 x 360, 60 rows above and below.
        (480, 640, 480, dict(resized_height=360, resized_width=480, pad_top=60, pad_left=0)),
        # Portrait 300 x 500 into 100: scale 0.2, 60 x 100, 20 columns on each side.
        (500, 300, 100, dict(resized_height=100, resized_width=60, pad_top=0, pad_left=20)),
        # 37 x 53 into 64: 64 / 53 * 37 = 44.68 -> 45 rows, (64 - 45) // 2 = 9 above.
        (37, 53, 64, dict(resized_height=45, resized_width=64, pad_top=9, pad_left=0)),
    ],
)
def test_geometry_keeps_the_aspect_ratio_and_centres(height, width, size, expected):
    geometry = letterbox_geometry(height=height, width=width, size=size)
    assert {k: getattr(geometry, k) for k in expected} == expected


def test_image_is_normalised_and_padding_is_the_mean_colour():
    white = Image.new("RGB", (640, 480), (255, 255, 255))
    image, geometry = Letterbox(480)(white)
    assert image.shape == (3, 480, 480) and image.dtype == torch.float32
    content = image[:, 60:420]
    torch.testing.assert_close(content, ((1 - MEAN) / STD).expand_as(content))
    assert image[:, :60].abs().max() == 0 and image[:, 420:].abs().max() == 0
    mean_colour = tuple(round(255 * m) for m in OPENAI_DATASET_MEAN)
    grey, _ = Letterbox(480)(Image.new("RGB", (640, 480), mean_colour))
    # The mean colour normalises to zero, up to the 1/255 rounding of the colour.
    assert grey.abs().max() < 0.5 / 255 / min(OPENAI_DATASET_STD)


def test_mask_follows_the_image_geometry():
    mask = np.zeros((480, 640), np.uint8)
    mask[:, :320] = 1
    geometry = letterbox_geometry(height=480, width=640, size=480)
    boxed = Letterbox(480).mask(mask, geometry)
    assert boxed.shape == (1, 480, 480) and set(boxed.unique().tolist()) == {0.0, 1.0}
    assert boxed[0, 60:420, :240].min() == 1 and boxed[0, 60:420, 240:].max() == 0
    assert boxed[0, :60].max() == 0 and boxed[0, 420:].max() == 0


def test_mask_of_the_wrong_size_is_refused():
    geometry = letterbox_geometry(height=30, width=40, size=32)
    with pytest.raises(ValueError, match="does not fit"):
        Letterbox(32).mask(np.zeros((40, 30)), geometry)


def _blob(height, width):
    ys, xs = np.mgrid[:height, :width]
    return (((xs - 0.4 * width) / (0.3 * width)) ** 2 + ((ys - 0.6 * height) / (0.25 * height)) ** 2 < 1).astype(np.uint8)


def _near_border(mask, distance=1):
    """Pixels within ``distance`` rows and columns of a pixel of the other value: the mask's border, not the image edge."""
    padded = np.pad(mask, distance, mode="edge")
    h, w = mask.shape
    windows = [padded[dy : dy + h, dx : dx + w] for dy in range(2 * distance + 1) for dx in range(2 * distance + 1)]
    return (np.max(windows, axis=0) != np.min(windows, axis=0))


@pytest.mark.parametrize("height, width", [(37, 53), (53, 37), (100, 61)])
def test_inverse_returns_the_mask_within_one_pixel_of_the_border(height, width):
    mask = _blob(height, width)
    geometry = letterbox_geometry(height=height, width=width, size=64)
    boxed = Letterbox(64).mask(mask, geometry)
    restored = to_original(boxed, geometry)
    assert restored.shape == (1, height, width)
    wrong = (restored[0].numpy() > 0.5) != mask.astype(bool)
    assert not np.any(wrong & ~_near_border(mask))


@pytest.mark.parametrize("resolution", [64, 16])
def test_inverse_puts_each_pixel_where_the_letterbox_put_it(resolution):
    # 60 x 30 into 64: 64 x 32 with 16 columns of padding each side. A map holding each position's
    # canvas x coordinate must come back as the canvas x of each original pixel centre, 16 + (j + 0.5) * 32 / 30,
    # at any map resolution (bilinear reproduces a linear ramp exactly).
    geometry = letterbox_geometry(height=60, width=30, size=64)
    assert (geometry.pad_left, geometry.resized_width) == (16, 32)
    canvas_x = (torch.arange(resolution) + 0.5) * 64 / resolution
    ramp = canvas_x.expand(resolution, resolution)
    restored = to_original(ramp, geometry)
    expected = 16 + (torch.arange(30) + 0.5) * 32 / 30
    assert restored.shape == (60, 30)
    torch.testing.assert_close(restored, expected.expand(60, 30), atol=1e-4, rtol=0)


def test_inverse_keeps_leading_dimensions_and_reads_the_map_bilinearly():
    # 40 x 30 into 32: 32 x 24 with 4 rows of padding above and below; the map is at 1/4 resolution,
    # 1 on its content rows 1..6 and 0 on the padding rows 0 and 7. Original row i lies at map row
    # (4 + (i + 0.5) * 0.8) / 4 - 0.5 (pixel-centre units): 0.6 for row 0, 0.8 for row 1, and within
    # rows 1..6 from row 2 to row 27.
    geometry = letterbox_geometry(height=30, width=40, size=32)
    probs = torch.zeros(2, 1, 8, 8)
    probs[:, :, 1:7] = 1.0
    restored = to_original(probs, geometry)
    assert restored.shape == (2, 1, 30, 40)
    expected = torch.ones(30)
    expected[[0, -1]] = 0.6
    expected[[1, -2]] = 0.8
    torch.testing.assert_close(restored, expected.view(30, 1).expand(2, 1, 30, 40))


def test_non_rgb_image_is_refused():
    with pytest.raises(ValueError, match="got mode L"):
        Letterbox(32)(Image.new("L", (8, 8)))
