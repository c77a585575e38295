"""The query diagnostic: each definition on hand-built tensors, the undefined cases, and sums over batches."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmnet.data.tokenizer import EOS, SOS
from mmnet.modeling import MMNetOutput
from mmnet.diagnostics import (
    DIAGNOSTIC_NAMES,
    QueryDiagnostics,
    query_mask_iou,
    score_entropy,
    score_spread,
    word_attention_entropy,
)



def test_word_attention_entropy_is_normalised_over_the_real_tokens_of_each_expression():
    # Sample 0: [SOS] word [EOS] and 2 padding tokens, so 3 real tokens of 5.
    # Sample 1: [SOS] word word [EOS] and 1 padding token, 4 real tokens.
    tokens = torch.tensor([[SOS, 320, EOS, 0, 0], [SOS, 320, 321, EOS, 0]])
    third, quarter = 1 / 3, 1 / 4
    attention = torch.tensor(
        [
            [
                [third, third, third, 0, 0],  # uniform over the 3 real tokens: ln 3 / ln 3 = 1 (over all 5: ln 3 / ln 5 = 0.68)
                [1, 0, 0, 0, 0],  # one word: 0
                [0.5, 0.5, 0, 0, 0],  # two of the 3 real tokens: ln 2 / ln 3 = 0.6309 (1 if the real tokens were those above 0)
            ],
            [[quarter] * 4 + [0]] * 3,  # uniform over its 4 real tokens: 1 for each query
        ]
    )
    entropy = word_attention_entropy(word_attention=attention, tokens=tokens)
    assert entropy.tolist() == pytest.approx([(1 + 0 + math.log(2) / math.log(3)) / 3, 1.0])  # [0.5436, 1]


def test_word_attention_entropy_of_a_single_real_token_is_zero():
    # All-zero tokens: the argmax, taken as [EOS], is position 0, so one real token and ln 1 = 0 to divide by.
    tokens = torch.zeros(1, 3, dtype=torch.int64)
    attention = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    assert word_attention_entropy(word_attention=attention, tokens=tokens).tolist() == [0.0]


def test_query_mask_iou_is_the_mean_over_pairs_of_masks_above_logit_zero():
    # Sample 0, 1 x 3 pixels: query 0 holds pixels {0, 1}, query 1 {1, 2}: I = 1, U = 3, IoU 1/3.
    # Sample 1: both masks empty, identical: IoU 1.
    masks = torch.tensor([[[[2.0, 3.0, -1.0]], [[-1.0, 1.0, 4.0]]], [[[-1.0, -2.0, -3.0]], [[-1.0, -1.0, -1.0]]]])
    assert query_mask_iou(query_masks=masks).tolist() == pytest.approx([1 / 3, 1.0])

    # Three queries on 2 x 2 pixels. Logit 0 is probability 0.5, not above it, so query 0 holds {0, 1}
    # (not {0, 1, 2}), query 1 {0}, query 2 nothing. Pairs: (0, 1) I = 1, U = 2, 1/2; (0, 2) and (1, 2)
    # 0 (U > 0, I = 0). Mean 1/6 (with pixel 2 in query 0 it would be (1/3 + 0 + 0) / 3 = 1/9).
    masks = torch.tensor([[[[1.0, 1.0], [0.0, -1.0]], [[1.0, -1.0], [-1.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])
    assert query_mask_iou(query_masks=masks).tolist() == pytest.approx([1 / 6])


def test_score_spread_and_entropy():
    scores = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert score_spread(query_scores=scores).tolist() == [1.0, 0.0]
    assert score_entropy(query_scores=scores).tolist() == pytest.approx([0.0, 1.0])  # one query takes all; equal scores
    # -(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) / ln 3 = (0.2497 + 0.3219 + 0.2303) / 1.0986 = 0.7298
    scores = torch.tensor([[0.7, 0.2, 0.1]])
    assert score_spread(query_scores=scores).tolist() == pytest.approx([0.6])
    assert score_entropy(query_scores=scores).tolist() == pytest.approx([0.7298467])


def outputs_of(*, query_masks, query_scores, word_attention) -> MMNetOutput:
    logits = query_masks[:, :1]
    return MMNetOutput(logits=logits, query_masks=query_masks, query_scores=query_scores, word_attention=word_attention)


def test_one_query_and_a_single_mask_leave_the_comparisons_undefined():
    tokens = torch.tensor([[SOS, 320, EOS], [SOS, EOS, 0]])
    one_query = outputs_of(
        query_masks=torch.ones(2, 1, 2, 2), query_scores=torch.ones(2, 1), word_attention=torch.tensor([[[0.5, 0.5, 0]], [[1.0, 0, 0]]])
    )
    assert query_mask_iou(query_masks=one_query.query_masks) is None
    assert score_spread(query_scores=one_query.query_scores) is None
    assert score_entropy(query_scores=one_query.query_scores) is None
    accumulated = QueryDiagnostics()
    accumulated.update(outputs=one_query, tokens=tokens)
    summary = accumulated.summary()
    # Sample 0: 2 of 3 real tokens weighted equally, ln 2 / ln 3; sample 1: 1 of 2, 0.
    assert summary["word_attention_entropy"] == pytest.approx(math.log(2) / math.log(3) / 2)
    assert summary["query_mask_iou"] is None and summary["score_spread"] is None and summary["score_entropy"] is None
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary

    # Without the Multi-Mask Projector: two scored queries mixed into a single mask.
    without_mmp = outputs_of(
        query_masks=torch.ones(2, 1, 2, 2), query_scores=torch.tensor([[1.0, 0.0], [1.0, 0.0]]), word_attention=torch.tensor([[[1.0, 0, 0]] * 2] * 2)
    )
    accumulated = QueryDiagnostics()
    accumulated.update(outputs=without_mmp, tokens=tokens)
    assert accumulated.summary() == {"word_attention_entropy": 0.0, "query_mask_iou": None, "score_spread": 1.0, "score_entropy": 0.0}


def test_two_batches_accumulate_to_the_means_of_one_batch_of_both():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[SOS, 320, EOS, 0], [SOS, 320, 321, EOS], [SOS, EOS, 0, 0]])
    padding = torch.tensor([[False, False, False, True], [False] * 4, [False, False, True, True]])
    outputs = outputs_of(
        query_masks=torch.randn(3, 4, 5, 5, generator=generator),
        query_scores=torch.randn(3, 4, generator=generator).softmax(dim=-1),
        word_attention=torch.randn(3, 4, 4, generator=generator).masked_fill(padding[:, None], float("-inf")).softmax(dim=-1),
    )
    whole, split = QueryDiagnostics(), QueryDiagnostics()
    whole.update(outputs=outputs, tokens=tokens)
    split.update(outputs=outputs.take(slice(0, 1)), tokens=tokens[:1])
    split.update(outputs=outputs.take(slice(1, None)), tokens=tokens[1:])
    assert list(whole.summary()) == list(DIAGNOSTIC_NAMES)
    assert split.summary() == pytest.approx(whole.summary())

    # Means over expressions, not over batches: spreads 1 in a batch of one, 0 and 0 in a batch of
    # two give 1/3 (the mean of the batches' means would be 1/2).
    scores = QueryDiagnostics()
    for batch_scores in (torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5], [0.5, 0.5]])):
        batch = batch_scores.shape[0]
        scores.update(
            outputs=outputs_of(query_masks=torch.ones(batch, 2, 1, 1), query_scores=batch_scores, word_attention=torch.ones(batch, 2, 1)),
            tokens=torch.full((batch, 1), EOS),
        )
    assert scores.summary()["score_spread"] == pytest.approx(1 / 3)
