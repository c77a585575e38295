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
    size = segmentation["size"]
    if not isinstance(size, list) or size != [height, width]:
        raise ValueError(f"RLE size {size!r} differs from the image size [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("latin-1")
    if isinstance(counts, str):
        counts = _compressed_runs(counts)
    if not isinstance(counts, list):
        raise ValueError("RLE counts must be a list of run lengths or a compressed string")
    # pycocotools decodes runs into a buffer of height * width without checking them: runs that
    # fall short leave pixels unset, runs that overshoot write past the end.
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE counts must be {height * width} pixels in non-negative runs")
    rle = coco_mask.frPyObjects({"size": size, "counts": counts}, height, width)
    return rle["counts"].decode("ascii")


def _compressed_runs(counts: str) -> list[int]:
    """The run lengths of a compressed RLE string, decoded as pycocotools' rleFrString does.

    Each run is 5-bit groups in characters '0'..'o' (bit 0x20: more groups follow; 0x10 in the
    last group: negative), and from the fourth run on it is stored as the difference to the run
    two before.
    """
    runs: list[int] = []
    value = shift = 0
    for char in counts:
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise ValueError(f"compressed RLE counts hold {char!r}, outside '0'..'o'")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
        value = shift = 0
    if shift:
        raise ValueError("compressed RLE counts end inside a run")
    return runs


def _polygons_to_rle(polygons: list, *, height: int, width: int) -> str:
    # pycocotools walks every outline pixel by pixel on a 5x finer grid: a coordinate that is not
    # finite, or far off the image, would take it unbounded time and memory.
    reach = 2 * max(height, width)
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) % 2:
            raise ValueError("a polygon must be a flat list of x, y numbers")
        if not all(isinstance(v, (int, float)) and -reach <= v <= reach for v in polygon):
            raise ValueError(f"a polygon must be a flat list of x, y numbers between -{reach} and {reach}")
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
