"""Pictures of predictions as in the paper's Figure 5: per expression one row of the image, the
ground truth, the final mask, and the best scored queries' masks with their scores."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

TILE = 120
FONT = ImageFont.load_default(size=12)
CAPTION = 16
LINE = 15  # a line of FONT with its leading
TEXT = 150  # width of the expression's cell at the start of a row
GAP = 4  # between tiles: dimmed neighbours would otherwise run together
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


def overlay(image: Image.Image, probability: np.ndarray | torch.Tensor, *, threshold: float) -> Image.Image:
    """A prediction over its image: dimmed where the object is unlikely, the mask
    (``probability`` above ``threshold``, H x W) outlined in red."""
    return spotlight(image, probability, outline=PREDICTION, threshold=threshold)


def _tile(
    image: Image.Image,
    caption: str,
    *,
    weight: Optional[np.ndarray] = None,
    outline: Optional[tuple[int, int, int]] = None,
) -> Image.Image:
    """``image`` fitted into a tile under ``caption``, spotlit by ``weight`` (H x W) if given. The
    weight is resized with the image, so that an outline is drawn one tile pixel wide."""
    scale = TILE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    if weight is not None:
        small = Image.fromarray(np.asarray(weight, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
        resized = spotlight(resized, np.asarray(small), outline=outline)
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    tile.paste(resized, ((TILE - resized.width) // 2, CAPTION))
    ImageDraw.Draw(tile).text((3, 1), caption, fill="black", font=FONT)
    return tile


def _text_cell(sentence: str) -> Image.Image:
    """The expression in quotes, wrapped to the cell's width; what does not fit ends in '...'."""
    lines: list[str] = []
    for word in f'"{sentence}"'.split():
        if lines and FONT.getlength(f"{lines[-1]} {word}") <= TEXT - 6:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    most = (TILE + CAPTION) // LINE
    if len(lines) > most:
        lines = lines[: most - 1] + [lines[most - 1] + " ..."]
    cell = Image.new("RGB", (TEXT, TILE + CAPTION), "white")
    draw = ImageDraw.Draw(cell)
    for i, line in enumerate(lines):
        draw.text((3, 1 + i * LINE), line, fill="black", font=FONT)
    return cell


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
    top_k: Optional[int] = 4,
    no_target_probability: Optional[float] = None,
    no_target: bool = False,
) -> Image.Image:
    """One row of the paper's Figure 5: the expression, the image, the ground truth, the prediction,
    and the masks of the ``top_k`` best scored queries (every query with ``None``), best first,
    each captioned with its number and score. All maps are H x W at the image's size.

    With a no-target head (``no_target_probability`` given) the prediction's caption gives that
    probability ("IoU 62.1, none 0.03"), and says "nothing matches .93" over an empty prediction
    when ``no_target``.
    """
    tiles = [_text_cell(sentence), _tile(image, "image")]
    if ground_truth is not None:
        tiles.append(_tile(image, "ground truth", weight=ground_truth, outline=GROUND_TRUTH))
    label = "prediction" if iou is None else f"prediction, IoU {100 * iou:.1f}"
    if no_target_probability is not None:  # short enough for a tile: "IoU 62.1, none 0.03", "nothing matches .93"
        if no_target:
            label = f"nothing matches {no_target_probability:.2f}".replace(" 0.", " .")
        else:
            label = f"{label.removeprefix('prediction, ')}, none {no_target_probability:.2f}"
    predicted = np.zeros(probability.shape, dtype=bool) if no_target else probability > threshold
    tiles.append(_tile(image, label, weight=predicted, outline=PREDICTION))
    # Without the Multi-Mask Projector the one mask is the prediction itself: nothing per query to show.
    if len(query_probabilities) == len(query_scores):
        order = np.argsort(-np.asarray(query_scores, dtype=np.float64), kind="stable")[:top_k]
        tiles += [_tile(image, f"q{n + 1} {query_scores[n]:.2f}", weight=query_probabilities[n]) for n in order]
    panel = Image.new("RGB", (sum(t.width + GAP for t in tiles) - GAP, TILE + CAPTION), "white")
    left = 0
    for tile in tiles:
        panel.paste(tile, (left, 0))
        left += tile.width + GAP
    return panel


def stack(panels: Sequence[Image.Image], *, gap: int = 8) -> Image.Image:
    """Panels one below the other, left-aligned: rows of the same ``top_k`` line up as a grid."""
    width = max(p.width for p in panels)
    sheet = Image.new("RGB", (width, sum(p.height for p in panels) + gap * (len(panels) - 1)), "white")
    top = 0
    for panel in panels:
        sheet.paste(panel, (0, top))
        top += panel.height + gap
    return sheet
