"""From the model's outputs to what a user sees: probabilities and masks at the original image size.

Training metrics, evaluation, the predictor and the web page all read MMNet's outputs through
these functions, so that a map means the same wherever it is shown or scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mmnet.data.transforms import Geometry, to_original
from mmnet.modeling import MMNetOutput


@dataclass
class Segmentation:
    """One expression's prediction at its image's original size (H x W), on the CPU."""

    probability: torch.Tensor
    """H x W float32: y (Eq. 16), the sigmoid of the final logits."""
    mask: torch.Tensor
    """H x W bool: ``probability`` above the threshold; all False when ``no_target``."""
    query_probabilities: Optional[torch.Tensor] = None
    """N_q x H x W float32, each query's mask probability (one map without MMP); only when asked for."""
    no_target_probability: Optional[float] = None
    """The no-target head's probability that the expression refers to nothing; None for a model
    without the head."""
    no_target: bool = False
    """The expression is taken to refer to nothing: ``no_target_probability`` above its threshold."""


def probabilities(logits: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """``... x h x w`` logits over the letterboxed canvas -> ``... x H x W`` float32 probabilities
    on the original image, on the logits' device (the sigmoid first, then one bilinear read)."""
    return to_original(logits.detach().float().sigmoid(), geometry)


def segment(
    outputs: MMNetOutput,
    geometries: Sequence[Geometry],
    *,
    threshold: float,
    no_target_threshold: float = 0.5,
    queries: bool = False,
) -> list[Segmentation]:
    """Each of B expressions' probability and mask at its image's original size.

    Args:
        outputs: the model's outputs for B expressions.
        geometries: B letterbox geometries, one per expression (the same one for expressions
            about the same image).
        threshold: probability above which a pixel is the object.
        no_target_threshold: for a model with the no-target head, the probability of "no target"
            above which the expression refers to nothing and its mask is left empty.
        queries: also map every query's mask (N_q maps per expression: only for showing them).
    """
    if len(geometries) != outputs.logits.shape[0]:
        raise ValueError(f"{len(geometries)} geometries for {outputs.logits.shape[0]} expressions")
    logits = outputs.logits[:, 0].detach().cpu()
    query_masks = outputs.query_masks.detach().cpu() if queries else None
    absent = None if outputs.no_target is None else outputs.no_target.detach().float().sigmoid().cpu().tolist()
    results = []
    for b, geometry in enumerate(geometries):
        probability = probabilities(logits[b], geometry)
        nothing = absent is not None and absent[b] > no_target_threshold
        results.append(
            Segmentation(
                probability=probability,
                mask=torch.zeros_like(probability, dtype=torch.bool) if nothing else probability > threshold,
                query_probabilities=probabilities(query_masks[b], geometry) if queries else None,
                no_target_probability=None if absent is None else absent[b],
                no_target=nothing,
            )
        )
    return results
