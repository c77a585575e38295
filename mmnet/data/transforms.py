"""The one place that resizes: letterboxing into the square network input and mapping predictions back.

An image of H x W is scaled by S / max(H, W) (aspect ratio kept), centred on an S x S canvas,
and normalised with the CLIP mean and std. The padding is 0 after normalisation, which is the
CLIP mean colour before it: padding with zeros and padding with the mean colour are the same
choice here. Masks follow the same geometry (nearest neighbour, padding 0), and `to_original`
is its exact inverse for predicted probability maps of any square resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
_STD = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)


@dataclass(frozen=True)
class Geometry:
    """Where an original image of height x width lies on the letterboxed size x size canvas."""

    height: int
    width: int
    size: int
    resized_height: int
    resized_width: int
    pad_top: int
    pad_left: int


def letterbox_geometry(*, height: int, width: int, size: int) -> Geometry:
    scale = size / max(height, width)
    resized_height = min(size, max(1, round(height * scale)))
    resized_width = min(size, max(1, round(width * scale)))
    return Geometry(
        height=height,
        width=width,
        size=size,
        resized_height=resized_height,
        resized_width=resized_width,
        pad_top=(size - resized_height) // 2,
        pad_left=(size - resized_width) // 2,
    )


class Letterbox:
    """Turns PIL images into normalised S x S network inputs, and masks into S x S targets."""

    def __init__(self, size: int):
        """
        Args:
            size: S, the side of the square network input (the model's image_size).
        """
        self.size = size

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, Geometry]:
        """RGB PIL image of W x H -> (float image 3 x S x S, its Geometry)."""
        if image.mode != "RGB":
            raise ValueError(f"Letterbox takes RGB images (mmnet.data.images.load_image makes them), got mode {image.mode}")
        geometry = letterbox_geometry(height=image.height, width=image.width, size=self.size)
        resized = image.resize((geometry.resized_width, geometry.resized_height), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
        content = (pixels.float().div_(255.0) - _MEAN) / _STD
        canvas = torch.zeros(3, self.size, self.size)
        canvas[:, _rows(geometry), _cols(geometry)] = content
        return canvas, geometry

    def mask(self, mask: np.ndarray | torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """Binary mask H x W (original size) -> float mask 1 x S x S in {0, 1}, padding 0 (nearest neighbour)."""
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != (geometry.height, geometry.width):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit an image of {geometry.height} x {geometry.width}")
        resized = F.interpolate(
            mask[None, None].float(), size=(geometry.resized_height, geometry.resized_width), mode="nearest-exact"
        )[0]
        canvas = torch.zeros(1, self.size, self.size)
        canvas[:, _rows(geometry), _cols(geometry)] = resized
        return canvas


def to_original(probs: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Maps predicted probabilities on the letterboxed canvas back onto the original image.

    Each original pixel centre is carried through the letterbox geometry onto the map and read
    there bilinearly, so the padding is left out and there is one interpolation, not two.

    Args:
        probs: ... x h x w probabilities over the whole S x S canvas at any resolution (h = w,
            e.g. the model's 4*H3 output); leading dimensions (B x 1, 1, none) share one geometry.
    Returns:
        ... x H x W float probabilities at the original size.
    """
    if probs.dim() < 2 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"expected a square map ... x h x w, got shape {tuple(probs.shape)}")
    lead = probs.shape[:-2]
    maps = probs.reshape(1, -1, *probs.shape[-2:]).float()
    # Normalised canvas coordinates in [-1, 1] of the original pixel centres (align_corners=False).
    xs = (geometry.pad_left + (torch.arange(geometry.width) + 0.5) * geometry.resized_width / geometry.width) / geometry.size
    ys = (geometry.pad_top + (torch.arange(geometry.height) + 0.5) * geometry.resized_height / geometry.height) / geometry.size
    grid_y, grid_x = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].to(maps)
    restored = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return restored.reshape(*lead, geometry.height, geometry.width)


def _rows(geometry: Geometry) -> slice:
    return slice(geometry.pad_top, geometry.pad_top + geometry.resized_height)


def _cols(geometry: Geometry) -> slice:
    return slice(geometry.pad_left, geometry.pad_left + geometry.resized_width)
