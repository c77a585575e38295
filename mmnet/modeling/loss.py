"""The training loss: binary cross-entropy between the final mask y and the ground truth, and
optionally supervision of each query's own mask and of the estimator's choice."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mmnet.modeling.mmnet import MMNetOutput


def target_for(logits: torch.Tensor, masks: torch.Tensor, *, resize: str = "area") -> torch.Tensor:
    """The ground truth B x 1 x H x W (or B x H x W) in {0, 1}, resized to the logits' h x w.

    ``area`` gives each cell the share of it that the object covers; ``nearest`` marks it wholly
    in or out, so that the best a model could learn, read back at the image's size, is a blocky
    outline: on the demo's data a model reproducing a nearest target exactly scores 74 mIoU, an
    area target 86 (benchmarks/target_ceiling.py).

    Returns:
        B x 1 x h x w in [0, 1].
    """
    if masks.ndim == 3:
        masks = masks[:, None]
    return F.interpolate(masks.float(), size=logits.shape[-2:], mode=resize)


def mask_loss(logits: torch.Tensor, masks: torch.Tensor, *, dice_weight: float = 0.0, resize: str = "area") -> torch.Tensor:
    """
    Args:
        logits: B x 1 x h x w, the model's ``logits``.
        masks: B x 1 x H x W (or B x H x W) ground truth in {0, 1}.
        dice_weight: weight of the Dice loss added to the cross-entropy.
        resize: how the ground truth is resized to h x w (``target_for``).
    Returns:
        the mean binary cross-entropy (plus Dice) against the ground truth resized to h x w, a scalar.
    """
    return query_losses(logits, masks, dice_weight=dice_weight, resize=resize).mean()


def query_losses(query_masks: torch.Tensor, masks: torch.Tensor, *, dice_weight: float = 0.0, resize: str = "area") -> torch.Tensor:
    """
    Args:
        query_masks: B x M x h x w mask logits.
        masks: the ground truth, as for ``mask_loss``.
        dice_weight: weight of the Dice loss, 1 - (2 |P T| + 1) / (|P| + |T| + 1) with P the
            probabilities, added to the cross-entropy. Unlike the cross-entropy's per-pixel mean,
            it weighs a small object as much as a large one.
        resize: how the ground truth is resized (``target_for``).
    Returns:
        B x M, each mask's mean binary cross-entropy (plus Dice) against the ground truth.
    """
    logits = query_masks.float()
    target = target_for(query_masks, masks, resize=resize).expand_as(logits)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    if dice_weight:
        probability = logits.sigmoid()
        overlap = (probability * target).sum(dim=(2, 3))
        dice = 1 - (2 * overlap + 1) / (probability.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
        loss = loss + dice_weight * dice
    return loss


def mmnet_loss(
    outputs: MMNetOutput,
    masks: torch.Tensor,
    *,
    query_loss: str,
    query_loss_weight: float,
    score_loss_weight: float,
    dice_weight: float = 0.0,
    target_resize: str = "area",
    no_target_weight: float = 0.0,
    no_target: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """The loss of one batch and its parts (scalars).

    ``loss`` is BCE (plus ``dice_weight`` x Dice) on y, plus with ``query_loss``:
    - ``all``: ``query_loss_weight`` x the mean BCE of every query's mask;
    - ``best``: ``query_loss_weight`` x the BCE of each sample's best query mask (multiple-choice
      learning: this term pulls only the winner toward the truth, so the queries may differ; the
      BCE on y still pulls every mask, in proportion to its score), and ``score_loss_weight`` x
      the cross-entropy of the scores against that winner, so that the estimator learns which
      mask to trust, as SAM's mask-quality head does. Its gradient reaches F_q as well as W_s.
    Without several masks (N_q = 1, or w/o MMP) the per-query terms are left out; a model without
    an estimator (w/o MQE) is trained with ``score_loss_weight`` 0, which leaves out the score term.

    A model with the no-target head adds ``no_target_weight`` x the binary cross-entropy of its
    logit against ``no_target`` (B booleans: the expression refers to nothing, as the dataset
    says), or where that is not given, against whether the sample's ground truth is empty; the BCE
    on y also pulls such a sample's mask toward empty.
    """
    parts = {"mask": mask_loss(outputs.logits, masks, dice_weight=dice_weight, resize=target_resize)}
    query_masks, scores = outputs.query_masks, outputs.query_scores
    if query_loss != "none" and query_masks.shape[1] > 1:
        per_query = query_losses(query_masks, masks, dice_weight=dice_weight, resize=target_resize)
        if query_loss == "all":
            parts["query"] = query_loss_weight * per_query.mean()
        else:
            best = per_query.detach().argmin(dim=1)
            parts["query"] = query_loss_weight * per_query.gather(1, best[:, None]).mean()
            if score_loss_weight > 0:
                # log S_q recovered from S_q, clamped where a score underflows to 0 (it then gets
                # no gradient from this term, only from the others).
                log_scores = scores.float().clamp_min(1e-12).log()
                parts["score"] = score_loss_weight * F.nll_loss(log_scores, best)
    if outputs.no_target is not None and no_target_weight > 0:
        # From the dataset where it says: a tiny object can vanish from a mask resized to the input.
        empty = no_target if no_target is not None else masks.flatten(1).amax(dim=1) <= 0
        parts["no_target"] = no_target_weight * F.binary_cross_entropy_with_logits(outputs.no_target.float(), empty.float())
    parts["loss"] = sum(parts.values())
    return parts
