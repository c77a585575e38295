"""The training loss: binary cross-entropy between the mask logits and the ground truth."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def target_for(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The ground truth B x 1 x H x W (or B x H x W) in {0, 1}, resized (nearest) to the
    logits' B x 1 x h x w."""
    if masks.ndim == 3:
        masks = masks[:, None]
    return F.interpolate(masks.float(), size=logits.shape[-2:], mode="nearest")


def mask_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """
    Args:
        logits: B x 1 x h x w, the model's ``logits``.
        masks: B x 1 x H x W (or B x H x W) ground truth in {0, 1}.
    Returns:
        the mean binary cross-entropy against the ground truth resized to h x w, a scalar.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), target_for(logits, masks))
