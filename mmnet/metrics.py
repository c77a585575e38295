"""The paper's metrics (Sec. 4.1), one implementation for training, evaluation and benchmarks.

Per expression: intersection I and union U of the predicted and ground-truth masks, IoU = I / U
(1 when both masks are empty: the prediction is exactly right). Over a split:

- mIoU, the mean of the IoUs (the "IoU" of the paper's tables);
- oIoU, the total intersection over the total union;
- Pr@X, the share of expressions whose IoU is above X, for X in 0.5 .. 0.9.

All are reported in percent, like the paper's tables.

Generalized referring segmentation (GRES, gRefCOCO) adds expressions that refer to several
objects (their truth is the union of the objects' masks) or to none (an empty truth). Its metrics:

- gIoU, the mean per-expression IoU, where a no-target expression scores 1 when nothing is
  predicted and 0 otherwise: with IoU = 1 for two empty masks this is mIoU, by definition;
- cIoU, cumulative intersection over cumulative union: oIoU;
- N-acc, the share of no-target expressions for which nothing is predicted;
- T-acc, the share of expressions with a target for which something is predicted.

"Nothing predicted" means an empty final mask: a model's no-target head empties the mask when it
fires (``mmnet.postprocess.segment``), and a model without one can only say "nothing" that way.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_NAMES = ("mIoU", "oIoU", *(f"Pr@{t}" for t in PRECISION_THRESHOLDS))
GENERALIZED_NAMES = ("gIoU", "cIoU", "N-acc", "T-acc")


def intersection_union(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Args:
        pred, target: B x H x W (or H x W) boolean masks.
    Returns:
        I and U, int64 tensors of shape B (or scalars).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
    pred, target = pred.bool(), target.bool()
    dims = (-2, -1)
    return (pred & target).sum(dim=dims), (pred | target).sum(dim=dims)


def iou(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Element-wise I / U as float64, 1 where U is 0."""
    intersection, union = intersection.double(), union.double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def summarize(
    intersections: Sequence[int] | torch.Tensor,
    unions: Sequence[int] | torch.Tensor,
    *,
    no_target: Optional[Sequence[bool] | torch.Tensor] = None,
    predicted_areas: Optional[Sequence[int] | torch.Tensor] = None,
) -> dict[str, float]:
    """mIoU, oIoU and Pr@0.5-0.9 in percent, and the number of expressions, from per-expression I
    and U; with ``no_target`` (whether each expression's truth is empty) and ``predicted_areas``
    (pixels in each predicted mask) also ``generalized`` (gIoU, cIoU, N-acc, T-acc)."""
    intersections = torch.as_tensor(intersections, dtype=torch.int64).reshape(-1)
    unions = torch.as_tensor(unions, dtype=torch.int64).reshape(-1)
    if intersections.numel() == 0:
        raise ValueError("no expressions to summarise")
    ious = iou(intersections, unions)
    total_union = int(unions.sum())
    overall = int(intersections.sum()) / total_union if total_union else 1.0
    result = {"mIoU": 100.0 * float(ious.mean()), "oIoU": 100.0 * overall}
    for threshold in PRECISION_THRESHOLDS:
        result[f"Pr@{threshold}"] = 100.0 * float((ious > threshold).double().mean())
    result["count"] = int(intersections.numel())
    if (no_target is None) != (predicted_areas is None):
        raise ValueError("the generalized metrics need both no_target and predicted_areas")
    if no_target is not None:
        result.update(generalized(intersections, unions, no_target, predicted_areas))
    return result


def generalized(
    intersections: Sequence[int] | torch.Tensor,
    unions: Sequence[int] | torch.Tensor,
    no_target: Sequence[bool] | torch.Tensor,
    predicted_areas: Sequence[int] | torch.Tensor,
) -> dict[str, Optional[float]]:
    """gIoU, cIoU, N-acc and T-acc in percent (GRES), and how many expressions have no target.

    N-acc is None when no expression is without a target, T-acc when every one is.
    """
    intersections = torch.as_tensor(intersections, dtype=torch.int64).reshape(-1)
    unions = torch.as_tensor(unions, dtype=torch.int64).reshape(-1)
    absent = torch.as_tensor(no_target, dtype=torch.bool).reshape(-1)
    nothing = torch.as_tensor(predicted_areas, dtype=torch.int64).reshape(-1) == 0
    if not intersections.numel() == unions.numel() == absent.numel() == nothing.numel():
        raise ValueError("intersections, unions, no_target and predicted_areas differ in length")
    if bool((absent & (intersections > 0)).any()):
        raise ValueError("an expression without a target cannot have a non-empty intersection")
    # A no-target expression: I = 0, and U = the predicted area, so IoU is 1 exactly when nothing
    # is predicted (U = 0) and 0 otherwise, as GRES defines it.
    ious = iou(intersections, unions)
    total_union = int(unions.sum())

    def share(hits: torch.Tensor, of: torch.Tensor) -> Optional[float]:
        return 100.0 * float(hits[of].double().mean()) if bool(of.any()) else None

    return {
        "gIoU": 100.0 * float(ious.mean()),
        "cIoU": 100.0 * int(intersections.sum()) / total_union if total_union else 100.0,
        "N-acc": share(nothing, absent),
        "T-acc": share(~nothing, ~absent),
        "no_target_count": int(absent.sum()),
    }


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per split; the GRES columns too where a row has them."""
    names = METRIC_NAMES + (GENERALIZED_NAMES if any("gIoU" in metrics for metrics in rows.values()) else ())
    header = f"{'split':<10}" + "".join(f"{name:>9}" for name in names) + f"{'count':>9}"
    lines = [header]
    for split, metrics in rows.items():
        cells = "".join(f"{'-':>9}" if metrics.get(name) is None else f"{metrics[name]:>9.2f}" for name in names)
        lines.append(f"{split:<10}" + cells + f"{metrics['count']:>9d}")
    return "\n".join(lines)
