"""The one image loader: any image file, PIL image or array a user or COCO has, as an upright RGB
picture with the colours a person sees."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from open_clip.constants import OPENAI_DATASET_MEAN
from PIL import Image, ImageOps

from mmnet.data.errors import DataError

BACKGROUND = tuple(round(255 * m) for m in OPENAI_DATASET_MEAN)
"""What transparent pixels are laid on: CLIP's mean colour, the letterbox's padding, so that where
the picture has nothing the model sees what it sees around the picture. Neither black nor white
objects vanish into it, as they would into the colour a file happens to store under its
transparent pixels."""


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
    try:
        return as_rgb(image)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None


def as_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB, as a person sees it.

    16-bit greyscale (I;16, I;16B, I;16L) is scaled by 255 / 65535. 32-bit integers (I) are read as
    16-bit when all lie in 0..65535, as a 16-bit PNG often opens, and otherwise over 0..2^31 - 1
    (negative values black). Floats (F) are scaled from [0, 1] when none exceeds 1, and otherwise
    taken as 0..255 and clipped there. Transparent pixels (alpha, or a transparent palette entry
    or colour) are laid on BACKGROUND. Grayscale, bilevel, palette and CMYK images are converted.

    Raises DataError for a float image holding NaN or infinity, or a mode PIL cannot convert.
    """
    if image.mode.startswith("I;16"):
        return from_array(np.asarray(image).astype(np.uint16))
    if image.mode == "I":
        values = np.asarray(image)
        if values.min() >= 0 and values.max() <= 65535:
            return from_array(values.astype(np.uint16))
        return from_array(np.clip(values, 0, None).astype(np.float32) / np.float32(2**31 - 1))
    if image.mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise DataError("a float image holding NaN or infinite values has no colours to read")
        top = 1.0 if values.max() <= 1 else 255.0
        return from_array(np.clip(values, 0, top) / np.float32(top))
    try:
        if image.has_transparency_data:
            image = Image.alpha_composite(Image.new("RGBA", image.size, BACKGROUND), image.convert("RGBA"))
        return image.convert("RGB")
    except ValueError as err:
        raise DataError(f"an image of mode {image.mode} cannot be converted to RGB ({err})") from None


def from_array(pixels: np.ndarray) -> Image.Image:
    """An image array as an RGB picture, as a person sees it.

    Args:
        pixels: H x W (grey), H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA), of uint8; uint16,
            scaled by 255 / 65535; or floats in [0, 1], scaled by 255. Transparent pixels are laid
            on BACKGROUND.
    Raises DataError naming the dtype and shape of any other array. Floats outside [0, 1] are
    refused rather than guessed at: 0..255 floats are more often a forgotten cast than intended.
    """
    shaped = pixels.size > 0 and (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 3, 4)))
    unsigned = pixels.dtype.kind == "u" and pixels.dtype.itemsize in (1, 2)
    floats = pixels.dtype.kind == "f" and pixels.size > 0
    finite = floats and bool(np.isfinite(pixels).all())
    if not (shaped and (unsigned or (finite and pixels.min() >= 0 and pixels.max() <= 1))):
        found = f"{pixels.dtype} {pixels.shape}"
        if floats:
            found += f" with values from {pixels.min()} to {pixels.max()}" if finite else " holding NaN or infinity"
        raise DataError(
            "an image array must be uint8 or uint16, or float in [0, 1], of H x W, H x W x 1, "
            f"H x W x 3 (RGB) or H x W x 4 (RGBA); got {found}"
        )
    if pixels.dtype.itemsize == 1:
        levels = pixels
    else:
        top = 65535 if unsigned else 1
        levels = np.rint(pixels.astype(np.float32) * np.float32(255 / top)).astype(np.uint8)
    if levels.ndim == 3 and levels.shape[2] == 1:
        levels = levels[..., 0]
    return as_rgb(Image.fromarray(np.ascontiguousarray(levels)))
