"""Eq. 16 as a mixture of probabilities, its loss, the per-query supervision, and the defaults
that make the queries, their masks and their scores differ."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmnet.modeling import mask_loss, mmnet_loss, query_losses, target_for
from mmnet.modeling.mask_decoder import MultiMaskProjector
from mmnet.modeling.mmnet import MMNetOutput, mixture_logit
from tiny import build_tiny, random_images, tokens_for

TEXTS = ["the blue triangle", "sandwich by fork", "big red circle left of the green square", "the lowest disc"]


def _mixture_inputs(scale: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    masks = scale * torch.randn(2, 3, 5, 4, generator=generator)
    log_scores = torch.randn(2, 3, generator=generator).log_softmax(dim=-1)
    return masks, log_scores


def test_the_mixture_is_the_score_weighted_sum_of_the_mask_probabilities():
    masks, log_scores = _mixture_inputs()
    expected = (log_scores.exp()[:, :, None, None] * masks.sigmoid()).sum(dim=1, keepdim=True)
    torch.testing.assert_close(mixture_logit(masks, log_scores).sigmoid(), expected)


def test_the_mixture_of_one_mask_with_score_one_is_that_mask():
    masks, _ = _mixture_inputs()
    torch.testing.assert_close(mixture_logit(masks[:, :1], torch.zeros(2, 1)), masks[:, :1])


def test_bce_on_the_mixture_logit_is_bce_on_the_probability_and_finite_at_60():
    masks, log_scores = _mixture_inputs()
    masks[0, :, 0, 0] = 60.0  # every mask sure of 1: in fp32 y rounds to exactly 1
    masks[1, :, 0, 0] = -60.0  # every mask sure of 0
    masks[0, 0, 1, 1], masks[0, 1, 1, 1] = 60.0, -60.0
    target = (torch.rand(2, 1, 5, 4, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    target[0, 0, 0, 0], target[1, 0, 0, 0] = 0.0, 1.0  # the worst case: sure and wrong
    logits = mixture_logit(masks.requires_grad_(), log_scores)
    loss = mask_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(masks.grad).all()
    # The same loss worked out in float64 from y and 1 - y = sum_n S_n (1 - sigmoid(mask_n)), each
    # a plain sum of sigmoids, so that neither rounds to 0.
    weights, doubled = log_scores.double().exp()[:, :, None, None], masks.detach().double()
    y, not_y = (weights * doubled.sigmoid()).sum(dim=1, keepdim=True), (weights * (-doubled).sigmoid()).sum(dim=1, keepdim=True)
    expected = -(target * y.log() + (1 - target) * not_y.log()).mean()
    assert abs(loss.item() - expected.item()) < 1e-4 * expected.item()
    # Pixel (0, 0) of sample 0: 1 - y = sum_n S_n sigmoid(-60), so its loss is 60 - log 1 = 60.
    pixel = F.binary_cross_entropy_with_logits(logits[0, 0, 0, 0], target[0, 0, 0, 0])
    assert abs(pixel.item() - 60.0) < 1e-3


def test_query_losses_are_each_masks_bce():
    masks, _ = _mixture_inputs()
    target = torch.zeros(2, 5, 4)
    target[:, 1:3, 1:3] = 1
    expected = torch.stack([F.binary_cross_entropy_with_logits(masks[:, n], target) for n in range(3)])
    per_query = query_losses(masks, target)
    assert per_query.shape == (2, 3)
    torch.testing.assert_close(per_query.mean(dim=0), expected)


def _outputs(query_masks: torch.Tensor, log_scores: torch.Tensor) -> MMNetOutput:
    scores = log_scores.exp()
    attention = torch.zeros(*scores.shape, 1)
    return MMNetOutput(logits=mixture_logit(query_masks, log_scores), query_masks=query_masks, query_scores=scores, word_attention=attention)


def test_best_query_loss_pulls_only_the_winner_and_teaches_the_estimator_to_pick_it():
    target = torch.zeros(1, 4, 4)
    target[:, :2] = 1
    truth = 8 * target - 4  # logits that are right everywhere
    # Query 1 is right, query 0 is the truth inverted, query 2 is unsure everywhere.
    masks = torch.stack([-truth, truth, torch.zeros(1, 4, 4)], dim=1).requires_grad_()
    score_logits = torch.zeros(1, 3, requires_grad=True)
    parts = mmnet_loss(_outputs(masks, score_logits.log_softmax(-1)), target, query_loss="best", query_loss_weight=2.0, score_loss_weight=0.5)
    per_query = query_losses(masks, target)
    assert per_query[0].argmin() == 1
    torch.testing.assert_close(parts["query"], 2.0 * per_query[0, 1])
    torch.testing.assert_close(parts["score"], torch.tensor(0.5 * torch.log(torch.tensor(3.0)).item()))  # -log(1/3)
    torch.testing.assert_close(parts["loss"], parts["mask"] + parts["query"] + parts["score"])
    (grad_masks,) = torch.autograd.grad(parts["query"], masks, retain_graph=True)
    assert grad_masks[0, 1].abs().sum() > 0 and grad_masks[0, 0].abs().sum() == 0 and grad_masks[0, 2].abs().sum() == 0
    (grad_scores,) = torch.autograd.grad(parts["score"], score_logits)
    assert grad_scores[0, 1] < 0 < grad_scores[0, 0]  # descent raises the winner's score


def test_all_query_loss_is_the_mean_and_none_is_the_mask_loss_alone():
    masks, log_scores = _mixture_inputs()
    target = torch.zeros(2, 5, 4)
    target[:, :3] = 1
    outputs = _outputs(masks, log_scores)
    every = mmnet_loss(outputs, target, query_loss="all", query_loss_weight=0.5, score_loss_weight=1.0)
    torch.testing.assert_close(every["query"], 0.5 * query_losses(masks, target).mean())
    assert "score" not in every
    alone = mmnet_loss(outputs, target, query_loss="none", query_loss_weight=0.5, score_loss_weight=1.0)
    assert set(alone) == {"mask", "loss"}
    torch.testing.assert_close(alone["loss"], mask_loss(outputs.logits, target))


def test_one_mask_gets_no_query_or_score_term():
    masks, _ = _mixture_inputs()
    outputs = _outputs(masks[:, :1], torch.zeros(2, 1))
    parts = mmnet_loss(outputs, torch.zeros(2, 5, 4), query_loss="best", query_loss_weight=1.0, score_loss_weight=1.0)
    assert set(parts) == {"mask", "loss"}


def _one_pixel_projector() -> MultiMaskProjector:
    """A projector on a 1 x 1 map of value 1 whose kernel centre is relu(q_0) and bias relu(q_1):
    query (a, b) makes the mask logit relu(a) + relu(b)."""
    projector = MultiMaskProjector(dim=2)
    projector.pixel = nn.Identity()
    with torch.no_grad():
        projector.kernel.weight.zero_()
        projector.kernel.bias.zero_()
        projector.kernel.weight[4, 0] = 1.0  # channel 0, row 1, column 1: the centre tap
        projector.kernel.weight[9, 1] = 1.0  # the bias
    return projector


def test_full_model_and_without_mmp_are_different_functions():
    """A worked example. Queries q1 = (2, 0) and q2 = (0, 3) make mask logits 2 and 3, scored 1/2 each.
    Full (Eq. 16 over probabilities): y = (sigmoid(2) + sigmoid(3)) / 2 = (0.8808 + 0.9526) / 2 = 0.9167.
    w/o MMP (Table 3): one query (1, 1.5) makes one mask of logit 2.5, sigmoid(2.5) = 0.9241.
    Eq. 16 over logits also gives sigmoid((2 + 3) / 2) = 0.9241: where the ReLU of Eq. 14 is
    inactive, the logit sum is the w/o MMP model."""
    projector = _one_pixel_projector()
    f_s = torch.ones(1, 1, 1, 1)  # F_p of one channel, after the identity "pixel" path
    queries = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    log_scores = torch.full((1, 2), 0.5).log()
    with torch.no_grad():
        masks = projector(f_s, queries)
        full = mixture_logit(masks, log_scores).sigmoid().item()
        logit_sum = (log_scores.exp()[:, :, None, None] * masks).sum(dim=1).sigmoid().item()
        without_mmp = projector(f_s, (log_scores.exp()[:, :, None] * queries).sum(dim=1, keepdim=True)).sigmoid().item()
    assert masks.flatten().tolist() == [2.0, 3.0]
    assert abs(full - 0.9167) < 1e-4
    assert abs(without_mmp - 0.9241) < 1e-4 and abs(logit_sum - without_mmp) < 1e-6
    assert abs(full - without_mmp) > 5e-3


class _Fixed(nn.Module):
    """Stands in for a part of the model and returns ``value``, whatever its inputs."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, *inputs):
        return self.value


@pytest.mark.parametrize(
    "changes, scores, expected, without_mmp_mask",
    [
        ({}, (0.5, 0.5), 0.9167, None),
        ({"multi_mask": False}, (0.5, 0.5), 0.9241, 2.5),
        ({"mask_sum": "logit"}, (0.5, 0.5), 0.9241, None),
        # scores 1/4 and 3/4: full 0.25 sigmoid(2) + 0.75 sigmoid(3) = 0.9346; w/o MMP: one query
        # (0.5, 2.25), logit 2.75, as the logit sum 0.25 x 2 + 0.75 x 3: sigmoid(2.75) = 0.9399
        ({}, (0.25, 0.75), 0.9346, None),
        ({"multi_mask": False}, (0.25, 0.75), 0.9399, 2.75),
        ({"mask_sum": "logit"}, (0.25, 0.75), 0.9399, None),
    ],
    ids=["full", "without-mmp", "logit-sum", "full-unequal", "without-mmp-unequal", "logit-sum-unequal"],
)
def test_the_worked_example_holds_through_the_model_decode(changes, scores, expected, without_mmp_mask):
    """The example above, run through ``MMNet.decode``: the query generator, the decoder and the
    estimator are fixed to give its queries, its one-pixel F_s and its scores."""
    model = build_tiny(num_queries=2, **changes).eval()
    model.query_generator = _Fixed((torch.tensor([[[2.0, 0.0], [0.0, 3.0]]]), None))
    model.decoder = _Fixed(torch.ones(1, 1, 1, 1))
    model.estimator = _Fixed(torch.tensor([scores]).log())
    model.projector = _one_pixel_projector()
    with torch.no_grad():
        out = model(random_images(1), tokens_for(TEXTS[:1]))
    assert out.logits.shape == (1, 1, 1, 1)
    assert abs(out.logits.sigmoid().item() - expected) < 1e-4
    assert out.query_masks.flatten().tolist() == ([without_mmp_mask] if without_mmp_mask else [2.0, 3.0])
    torch.testing.assert_close(out.query_scores, torch.tensor([scores]))


PAPER_TEXT = {"word_logit_scale": None, "init": "pytorch", "estimator_residual": False}


def _query_spreads(backbone: str, seed: int, **changes) -> tuple[float, float, float]:
    """(word-attention entropy normalised to 1 for uniform weights, the spread of the mask
    probabilities across queries, the spread max - min of the scores), each a mean."""
    model = build_tiny(backbone, seed=seed, num_queries=8, **changes).eval()
    tokens = tokens_for(TEXTS)
    with torch.no_grad():
        out = model(random_images(len(TEXTS), seed=seed), tokens)
    attention = out.word_attention
    real = tokens.argmax(dim=-1) + 1  # tokens up to and including [EOS]
    entropy = -(attention * attention.clamp_min(1e-30).log()).sum(-1) / real.float().log()[:, None]
    scores = out.query_scores
    return (
        entropy.mean().item(),
        out.query_masks.sigmoid().std(dim=1).mean().item(),
        (scores.max(dim=1).values - scores.min(dim=1).values).mean().item(),
    )


@pytest.mark.parametrize("backbone", ["RN-tiny", "ViT-tiny"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_the_defaults_the_queries_masks_and_scores_differ_at_initialisation(backbone, seed):
    """Margins from measurement: over these seeds and towers the defaults gave an entropy of
    0.83-0.97, mask spreads of 0.0008-0.029 and score spreads of 0.0026-0.041; the paper's text
    (plain Eq. 9, PyTorch's initialisation, no residual) gives entropies above 0.9999, mask spreads below 3e-5 and score spreads of 0 on the same inputs."""
    entropy, mask_spread, score_spread = _query_spreads(backbone, seed)
    assert entropy < 0.99 and mask_spread > 4e-4 and score_spread > 1e-3, (entropy, mask_spread, score_spread)
    entropy, mask_spread, score_spread = _query_spreads(backbone, seed, **PAPER_TEXT)
    assert entropy > 0.999 and mask_spread < 1e-4 and score_spread < 1e-5, (entropy, mask_spread, score_spread)


def test_the_target_holds_the_share_of_each_cell_the_object_covers():
    truth = torch.zeros(1, 4, 4)
    truth[0, :2, :2] = 1  # the top-left cell of the 2 x 2 target, wholly
    truth[0, 3, 3] = 1  # a quarter of the bottom-right one
    truth[0, 0, 2] = truth[0, 1, 2] = 1  # half of the top-right one
    target = target_for(torch.zeros(1, 1, 2, 2), truth)
    torch.testing.assert_close(target, torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]]))


def test_dice_term_is_one_minus_the_smoothed_dice_of_the_probabilities():
    """Logits 0 give probabilities 1/2 on 4 cells; the truth covers 2. Dice = (2 * 1 + 1) / (2 + 2 + 1) = 3/5."""
    logits, truth = torch.zeros(1, 1, 2, 2), torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    bce = F.binary_cross_entropy_with_logits(logits, truth[:, None])
    torch.testing.assert_close(query_losses(logits, truth, dice_weight=2.0), (bce + 2.0 * (1 - 3 / 5)).reshape(1, 1))
    torch.testing.assert_close(query_losses(logits, truth), bce.reshape(1, 1))


def test_log_sigmoid_stays_finite_where_log_of_sigmoid_does_not():
    from mmnet.modeling.mmnet import _log_sigmoid

    x = torch.tensor([-200.0, -100.0, -60.0, -1.0, 0.0, 1.0, 60.0, 100.0, 200.0])
    torch.testing.assert_close(_log_sigmoid(x), F.logsigmoid(x))
    assert torch.isinf(x.sigmoid().log()[0])  # the naive form, as ONNX exports F.logsigmoid


def test_without_a_score_weight_there_is_no_score_term():
    masks, log_scores = _mixture_inputs()
    parts = mmnet_loss(_outputs(masks, log_scores), torch.zeros(2, 5, 4), query_loss="best", query_loss_weight=1.0, score_loss_weight=0.0)
    assert set(parts) == {"mask", "query", "loss"}


def test_he_initialisation_of_the_heads():
    model = build_tiny(num_queries=4)
    linear = model.query_generator.proj_a[0]  # W_a, C_word -> C, then a ReLU
    fan_in = linear.weight.shape[1]
    assert abs(linear.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.15
    assert torch.all(linear.bias == 0)
    attention = model.estimator.attn.q_proj  # Xavier's uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    bound = (6 / sum(attention.weight.shape)) ** 0.5
    assert attention.weight.abs().max() <= bound and attention.weight.abs().max() > 0.9 * bound
    assert torch.all(attention.bias == 0)
    default = build_tiny(num_queries=4, init="pytorch").query_generator.proj_a[0]
    assert default.weight.std() < 0.7 * linear.weight.std()  # PyTorch's default draws a sixth of He's variance: std ratio 0.41
