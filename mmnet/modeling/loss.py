"""The training loss: binary cross-entropy between the mask logits and the ground truth."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """
    Args:
        logits: B x 1 x h x w, the model's ``logits``.
        masks: B x 1 x H x W (or B x H x W) ground truth in {0, 1}, resized here (nearest) to h x w.
    Returns:
        the mean binary cross-entropy, a scalar.
    """
    if masks.ndim == 3:
        masks = masks[:, None]
    target = F.interpolate(masks.float(), size=logits.shape[-2:], mode="nearest")
    return F.binary_cross_entropy_with_logits(logits.float(), target)
