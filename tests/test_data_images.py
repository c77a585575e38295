import numpy as np
import pytest
from PIL import Image

from mmnet.data.errors import DataError
from mmnet.data.images import BACKGROUND, as_rgb, load_image


def _exif_oriented(path, orientation=6):
    """A 40 x 20 JPEG, left half red and right half blue, with this EXIF orientation (6: turn 90 degrees clockwise to view)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (220, 20, 20)
    pixels[:, 20:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def _red(pixels, row, col):
    return pixels[row, col, 0] > 200 and pixels[row, col, 2] < 60


def test_grayscale_jpeg_becomes_rgb_with_equal_channels(tmp_path):
    Image.new("L", (12, 8), 90).save(tmp_path / "g.jpg")
    image = load_image(tmp_path / "g.jpg")
    assert image.mode == "RGB" and image.size == (12, 8)
    pixels = np.asarray(image).astype(int)
    assert np.all(np.abs(pixels - 90) <= 2)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (12, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    pixels = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert np.all(np.abs(pixels - [255, 0, 0]) <= 3)


@pytest.mark.parametrize("orientation, size, red_at", [(3, (40, 20), (10, 35)), (6, (20, 40), (5, 10))])
def test_exif_orientation_is_applied_without_annotations(tmp_path, orientation, size, red_at):
    # 3 turns the picture half round (red to the right), 6 a quarter clockwise (red to the top).
    image = load_image(_exif_oriented(tmp_path / "r.jpg", orientation))
    assert image.size == size and _red(np.asarray(image), *red_at)


@pytest.mark.parametrize("orientation", [3, 6])
def test_annotations_drawn_on_stored_pixels_keep_the_stored_orientation(tmp_path, orientation):
    # COCO's annotations describe the stored pixels when their size is the stored size; the
    # loader keeps those pixels whatever the orientation, a half turn (same size) included.
    image = load_image(_exif_oriented(tmp_path / "r.jpg", orientation), size=(40, 20))
    assert image.size == (40, 20)
    assert _red(np.asarray(image), 10, 5) and not _red(np.asarray(image), 10, 35)


def test_annotations_drawn_on_the_upright_picture_get_it(tmp_path):
    image = load_image(_exif_oriented(tmp_path / "r.jpg", 6), size=(20, 40))
    assert image.size == (20, 40) and _red(np.asarray(image), 5, 10)


def test_size_that_fits_neither_orientation_is_an_error(tmp_path):
    path = _exif_oriented(tmp_path / "r.jpg")
    with pytest.raises(DataError, match="annotations say 30 x 20") as err:
        load_image(path, size=(30, 20))
    assert str(path) in str(err.value)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(DataError, match="image not found") as err:
        load_image(tmp_path / "COCO_train2014_000000000042.jpg")
    assert "COCO_train2014_000000000042.jpg" in str(err.value)


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "garbage":
        path.write_bytes(b"not a jpeg at all")
    else:
        noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noisy).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match="cannot be read as an image") as err:
        load_image(path)
    assert str(path) in str(err.value)


MID_GREY = 32768 * 255 / 65535


def _stored(path, mode, value):
    """A 12 x 8 image of one value in ``mode``, written to ``path`` in a format that opens in that mode."""
    if mode == "P":
        image = Image.new("P", (12, 8), 0)
        image.putpalette([200, 10, 10, 0, 0, 255])
        image.save(path, transparency=value)
    elif mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        Image.fromarray(np.full((8, 12), value, dtype)).save(path)
    else:
        image = Image.new(mode, (12, 8))
        image.putdata([value] * 96)
        image.save(path)
    return path


# (mode, file, stored value, the colour a person sees)
MODES = [
    ("I;16", "g.png", 32768, (MID_GREY,) * 3),
    ("I;16B", "g.tif", 32768, (MID_GREY,) * 3),
    ("I", "sixteen.tif", 32768, (MID_GREY,) * 3),  # all in 0..65535: 16-bit
    ("I", "wide.tif", 2**30, (2**30 * 255 / (2**31 - 1),) * 3),  # beyond: 32-bit
    ("F", "unit.tif", 0.5, (127.5,) * 3),  # none above 1: [0, 1]
    ("F", "levels.tif", 200.0, (200,) * 3),  # above 1: 0..255
    ("LA", "la.png", (0, 0), BACKGROUND),  # black under full transparency
    ("P", "p.png", 0, BACKGROUND),  # palette entry 0, red, is transparent
    ("CMYK", "c.tif", (0, 255, 255, 0), (255, 0, 0)),
]


@pytest.mark.parametrize("read", ["file", "pil"])
@pytest.mark.parametrize("mode, name, value, seen", MODES, ids=[f"{m}-{n}" for m, n, *_ in MODES])
def test_every_mode_is_read_as_a_person_sees_it(tmp_path, read, mode, name, value, seen):
    path = _stored(tmp_path / name, mode, value)
    with Image.open(path) as stored:
        assert stored.mode == mode
        image = load_image(path) if read == "file" else as_rgb(stored)
    assert image.mode == "RGB" and image.size == (12, 8)
    assert np.all(np.abs(np.asarray(image).astype(float) - seen) <= 1)


def test_a_float_image_holding_nan_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "nan.tif"
    Image.fromarray(np.full((8, 12), np.nan, np.float32)).save(path)
    with pytest.raises(DataError, match="NaN") as err:
        load_image(path)
    assert str(path) in str(err.value)
