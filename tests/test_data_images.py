import numpy as np
import pytest
from PIL import Image

from mmnet.data.errors import DataError
from mmnet.data.images import load_image


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
