"""What the N_q queries do: whether they differ, for any model or checkpoint.

Per expression, from the model's outputs:

- word-attention entropy: each query's entropy of A (Eq. 9) over the real tokens ([SOS], the
  words and [EOS], as ``padding_mask`` of the tokens says, not where A is above 0), divided by
  log(real tokens), averaged over the queries: 1 = every word weighted equally, 0 = one word.
  With a single real token there is no choice to make, and it is 0.
- query-mask IoU: the mean over query pairs n < m of IoU(mask_n > 0, mask_m > 0), i.e. of the
  masks at probability 0.5; two empty masks are identical and have IoU 1. 1 = all masks equal.
- score spread: max - min of S_q (Eq. 15).
- score entropy: the entropy of S_q over log N_q: 1 = equal scores, 0 = one query takes all.

A quantity with nothing to compare is None: all four but the word entropy for N_q = 1, and the
mask IoU without the Multi-Mask Projector, whose single mask comes from the queries mixed into
one. None, not NaN, so that the split's means stay valid JSON.
"""

from __future__ import annotations

from typing import Optional

import torch

from mmnet import distributed
from mmnet.data.tokenizer import padding_mask
from mmnet.metrics import iou
from mmnet.modeling.mmnet import MMNetOutput

LABELS = {
    "word_attention_entropy": "word entropy",
    "query_mask_iou": "mask IoU",
    "score_spread": "score spread",
    "score_entropy": "score entropy",
}
"""Each diagnostic's name in the summary, and its column heading in the tables."""
DIAGNOSTIC_NAMES = tuple(LABELS)
MEANING = (
    "Means over expressions: word entropy 1 = each query weighs all words equally, 0 = one word; "
    "mask IoU 1 = the queries' masks are identical; score spread = top minus bottom query score; "
    "score entropy 1 = equal scores, 0 = one query takes all; n/a = nothing to compare (one query or one mask)."
)


def _normalised_entropy(p: torch.Tensor, size: torch.Tensor | int) -> torch.Tensor:
    """Entropy of ``p`` (... x K, 0 log 0 = 0) over log ``size``, 0 where ``size`` is 1."""
    entropy = -torch.xlogy(p, p).sum(dim=-1)
    log_size = torch.log(torch.as_tensor(size, dtype=p.dtype, device=p.device))
    return torch.where(log_size > 0, entropy / log_size, torch.zeros_like(entropy))


def word_attention_entropy(*, word_attention: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """
    Args:
        word_attention: B x N_q x L, each query's weights over the tokens (Eq. 9).
        tokens: B x L token ids.
    Returns:
        B, float64: the queries' mean normalised entropy over the real tokens.
    """
    padding = padding_mask(tokens.to(word_attention.device))
    weights = word_attention.double().masked_fill(padding[:, None, :], 0.0)
    real = (~padding).sum(dim=-1, keepdim=True)  # B x 1, against each query's B x N_q
    return _normalised_entropy(weights, real).mean(dim=1)


def query_mask_iou(*, query_masks: torch.Tensor) -> Optional[torch.Tensor]:
    """
    Args:
        query_masks: B x N_q x h x w mask logits (B x 1 x h x w without the Multi-Mask Projector).
    Returns:
        B, float64: the mean IoU over pairs of queries; None for a single mask.
    """
    count = query_masks.shape[1]
    if count < 2:
        return None
    # float64 counts are exact and, unlike float32, left alone by autocast.
    masks = (query_masks > 0).flatten(2).double()
    intersection = masks @ masks.transpose(1, 2)
    area = intersection.diagonal(dim1=1, dim2=2)
    union = area[:, :, None] + area[:, None, :] - intersection
    n, m = torch.triu_indices(count, count, offset=1, device=masks.device)
    return iou(intersection[:, n, m], union[:, n, m]).mean(dim=1)


def score_spread(*, query_scores: torch.Tensor) -> Optional[torch.Tensor]:
    """
    Args:
        query_scores: B x N_q, S_q (Eq. 15).
    Returns:
        B, float64: max - min; None for a single query.
    """
    if query_scores.shape[1] < 2:
        return None
    scores = query_scores.double()
    return scores.amax(dim=1) - scores.amin(dim=1)


def score_entropy(*, query_scores: torch.Tensor) -> Optional[torch.Tensor]:
    """
    Args:
        query_scores: B x N_q, S_q (Eq. 15), summing to 1.
    Returns:
        B, float64: the entropy over log N_q; None for a single query.
    """
    if query_scores.shape[1] < 2:
        return None
    return _normalised_entropy(query_scores.double(), query_scores.shape[1])


class QueryDiagnostics:
    """Sums of the per-expression diagnostics over the batches of a split; ``summary`` adds up
    every process's sums, so a split sharded over processes gives the means of the whole split."""

    def __init__(self, *, device: torch.device | str = "cpu") -> None:
        """
        Args:
            device: where the sums are kept: the outputs' device, and the one the process
                group's collectives take (a GPU under NCCL).
        """
        self._sums = torch.zeros(2, len(DIAGNOSTIC_NAMES), dtype=torch.float64, device=device)  # sums; counts

    def update(self, *, outputs: MMNetOutput, tokens: torch.Tensor) -> None:
        """
        Args:
            outputs: the model's outputs for B expressions.
            tokens: B x L, their token ids.
        """
        values = (
            word_attention_entropy(word_attention=outputs.word_attention, tokens=tokens),
            query_mask_iou(query_masks=outputs.query_masks),
            score_spread(query_scores=outputs.query_scores),
            score_entropy(query_scores=outputs.query_scores),
        )
        for column, value in enumerate(values):
            if value is not None:
                self._sums[0, column] += value.sum().to(self._sums.device)
                self._sums[1, column] += value.numel()

    def summary(self) -> dict[str, Optional[float]]:
        """The means over every expression seen by every process; None where none was defined.
        A collective under torchrun: every process must call it."""
        sums, counts = distributed.all_reduce_sum(self._sums.clone()).tolist()
        return {name: total / count if count else None for name, total, count in zip(DIAGNOSTIC_NAMES, sums, counts)}


def format_value(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(rows: dict[str, dict[str, Optional[float]]]) -> str:
    """A plain-text table, one row per split, of ``summary`` dicts."""
    widths = [max(len(LABELS[name]), 5) + 2 for name in DIAGNOSTIC_NAMES]
    lines = [f"{'queries':<10}" + "".join(f"{LABELS[name]:>{width}}" for name, width in zip(DIAGNOSTIC_NAMES, widths))]
    for split, row in rows.items():
        lines.append(f"{split:<10}" + "".join(f"{format_value(row[name]):>{width}}" for name, width in zip(DIAGNOSTIC_NAMES, widths)))
    return "\n".join(lines)
