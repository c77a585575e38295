"""Pictures of predictions as in the paper's Figure 5: the image, the ground truth, the final mask,
and every query's mask with its score."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

TILE = 160
CAPTION = 16
GROUND_TRUTH = (40, 220, 90)
PREDICTION = (255, 60, 60)


def spotlight(
    image: Image.Image,
    weight: np.ndarray | torch.Tensor,
    *,
    outline: Optional[tuple[int, int, int]] = None,
    threshold: float = 0.5,
) -> Image.Image:
    """Keeps ``image`` bright where ``weight`` (H x W in [0, 1], a mask or a probability map) is
    high and dims it elsewhere, which reads the same whatever the objects' colours; ``outline``
    draws the border of ``weight > threshold`` in that colour."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = np.asarray(weight, dtype=np.float32)
    lit = pixels * (0.25 + 0.75 * weight[..., None])
    if outline is not None:
        inside = weight > threshold
        edge = inside & ~(
            np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
        )
        lit[edge] = outline
    return Image.fromarray(lit.clip(0, 255).astype(np.uint8))


def _tile(image: Image.Image, caption: str) -> Image.Image:
    scale = TILE / max(image.size)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    tile.paste(resized, ((TILE - resized.width) // 2, CAPTION + (TILE - resized.height) // 2))
    ImageDraw.Draw(tile).text((3, 2), caption, fill="black")
    return tile


def expression_panel(
    image: Image.Image,
    sentence: str,
    *,
    ground_truth: Optional[np.ndarray],
    probability: np.ndarray,
    threshold: float,
    query_probabilities: Sequence[np.ndarray],
    query_scores: Sequence[float],
    iou: Optional[float] = None,
    columns: int = 6,
) -> Image.Image:
    """One expression: a header row (image, ground truth, prediction) and the query masks, best
    scored first, ``columns`` to a row. All maps are H x W at the image's size."""
    header = [_tile(image, "image")]
    if ground_truth is not None:
        header.append(_tile(spotlight(image, ground_truth, outline=GROUND_TRUTH), "ground truth"))
    label = "prediction" if iou is None else f"prediction, IoU {100 * iou:.1f}"
    header.append(_tile(spotlight(image, probability > threshold, outline=PREDICTION), label))
    order = np.argsort(-np.asarray(query_scores, dtype=np.float64), kind="stable")
    queries = [_tile(spotlight(image, query_probabilities[n]), f"query {n + 1}: {query_scores[n]:.2f}") for n in order]
    rows = [header] + [queries[i : i + columns] for i in range(0, len(queries), columns)]
    width = max(len(row) for row in rows) * TILE
    panel = Image.new("RGB", (width, CAPTION + len(rows) * (TILE + CAPTION)), "white")
    ImageDraw.Draw(panel).text((3, 2), f'"{sentence}"', fill="black")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            panel.paste(tile, (c * TILE, CAPTION + r * (TILE + CAPTION)))
    return panel


def stack(panels: Sequence[Image.Image], *, gap: int = 8) -> Image.Image:
    """Panels one below the other."""
    width = max(p.width for p in panels)
    sheet = Image.new("RGB", (width, sum(p.height for p in panels) + gap * (len(panels) - 1)), "white")
    top = 0
    for panel in panels:
        sheet.paste(panel, (0, top))
        top += panel.height + gap
    return sheet
