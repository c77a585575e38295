"""The paper's metrics (Sec. 4.1), one implementation for training, evaluation and benchmarks.

Per expression: intersection I and union U of the predicted and ground-truth masks, IoU = I / U
(1 when both masks are empty: the prediction is exactly right). Over a split:

- mIoU, the mean of the IoUs (the "IoU" of the paper's tables);
- oIoU, the total intersection over the total union;
- Pr@X, the share of expressions whose IoU is above X, for X in 0.5 .. 0.9.

All are reported in percent, like the paper's tables.
"""

from __future__ import annotations

from typing import Sequence

import torch

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_NAMES = ("mIoU", "oIoU", *(f"Pr@{t}" for t in PRECISION_THRESHOLDS))


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


def summarize(intersections: Sequence[int] | torch.Tensor, unions: Sequence[int] | torch.Tensor) -> dict[str, float]:
    """mIoU, oIoU and Pr@0.5-0.9 in percent, and the number of expressions, from per-expression I and U."""
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
    return result


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per split."""
    header = f"{'split':<10}" + "".join(f"{name:>9}" for name in METRIC_NAMES) + f"{'count':>9}"
    lines = [header]
    for split, metrics in rows.items():
        lines.append(f"{split:<10}" + "".join(f"{metrics[name]:>9.2f}" for name in METRIC_NAMES) + f"{metrics['count']:>9d}")
    return "\n".join(lines)
