"""The one image loader: any JPEG or PNG a user or COCO has, as an upright RGB picture."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps

from mmnet.data.errors import DataError


def load_image(path: str | Path, *, size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Reads an image as RGB (grayscale, CMYK, palette and alpha images converted), upright by its EXIF orientation.

    Args:
        path: the image file.
        size: (width, height) the annotations were drawn on, when there are annotations. Where the
            stored pixels have that size they are kept as stored, whatever the EXIF orientation
            (COCO's annotations describe the stored pixels); otherwise the upright picture must
            have it. Any other size is an error.

    Raises DataError naming the file when it is missing, unreadable, or of the wrong size.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as stored:
            stored.load()
            keep_stored = size is not None and tuple(stored.size) == tuple(size)
            image = stored if keep_stored else ImageOps.exif_transpose(stored)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot be read as an image ({err})") from None
    if size is not None and tuple(image.size) != tuple(size):
        raise DataError(f"{path}: image is {image.size[0]} x {image.size[1]} but the annotations say {size[0]} x {size[1]}")
    return as_rgb(image)


def as_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB: grayscale, CMYK, palette and alpha images converted."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")
