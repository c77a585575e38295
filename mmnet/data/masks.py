"""COCO segmentations (polygons, uncompressed or compressed RLE) to binary masks, via pycocotools.

Every segmentation is turned into one compressed RLE string when the index is built; a mask is
decoded from that string when a sample is read.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as coco_mask


def segmentation_to_rle(segmentation: Any, *, height: int, width: int) -> str:
    """Returns the compressed RLE counts of a COCO segmentation on an image of height x width.

    Raises ValueError with the reason when the segmentation is malformed.
    """
    if isinstance(segmentation, list):
        return _polygons_to_rle(segmentation, height=height, width=width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError("segmentation is neither a list of polygons nor an RLE dict with counts and size")
    size = list(segmentation["size"])
    if size != [height, width]:
        raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if sum(counts) != height * width or any(not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError(f"uncompressed RLE counts must be {height * width} pixels in non-negative runs")
        rle = coco_mask.frPyObjects(segmentation, height, width)
    elif isinstance(counts, (str, bytes)):
        rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError("RLE counts must be a list of run lengths or a compressed string")
    return rle["counts"].decode("ascii")


def _polygons_to_rle(polygons: list, *, height: int, width: int) -> str:
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) % 2 or not all(isinstance(v, (int, float)) for v in polygon):
            raise ValueError("a polygon must be a flat list of x, y numbers")
    # A polygon of two points has no area, and pycocotools would read a 4-number list as a box.
    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
        raise ValueError("no polygon has three or more points")
    rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    return rle["counts"].decode("ascii")


def decode_rle(counts: str, *, height: int, width: int) -> np.ndarray:
    """Compressed RLE counts -> uint8 mask, height x width, values in {0, 1}."""
    mask = coco_mask.decode({"size": [height, width], "counts": counts.encode("ascii")})
    return np.ascontiguousarray(mask)


def rasterize_polygons(polygons: Sequence[Sequence[float]], *, height: int, width: int) -> np.ndarray:
    """The mask the reader decodes from these polygons: uint8, height x width."""
    return decode_rle(_polygons_to_rle([list(p) for p in polygons], height=height, width=width), height=height, width=width)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """A mask as COCO writes crowd regions in instances.json: {"size": [H, W], "counts": [runs]}.

    Runs alternate background and foreground over the pixels in column-major order, starting
    with background (a zero-length run when the first pixel is foreground).
    """
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs.insert(0, 0)
    return {"size": list(mask.shape), "counts": runs}
