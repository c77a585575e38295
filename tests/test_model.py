"""The network's behaviour: shapes, masking of padding, the weighted sum, ablations, gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mmnet.errors import MMNetError
from mmnet.modeling import mask_loss
from tiny import TINY_IMAGE_SIZE, build_tiny, random_images, tokens_for, with_distinct_queries

BACKBONES = ["RN-tiny", "ViT-tiny"]
TEXTS = ["the blue triangle", "sandwich by fork", "big red circle left of the green square"]


def _images(batch: int = len(TEXTS)) -> torch.Tensor:
    return random_images(batch)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_shapes(backbone):
    model = build_tiny(backbone, num_queries=5).eval()
    out = model(_images(), tokens_for(TEXTS))
    side = 4 * TINY_IMAGE_SIZE // 16
    assert out.logits.shape == (3, 1, side, side)
    assert out.query_masks.shape == (3, 5, side, side)
    assert out.query_scores.shape == (3, 5)
    assert out.word_attention.shape == (3, 5, 17)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_padding_tokens_do_not_change_output(backbone):
    model = build_tiny(backbone).eval()
    tokens = tokens_for(TEXTS)
    images = _images()
    noisy = tokens.clone()
    after_eos = torch.arange(tokens.shape[1])[None] > tokens.argmax(dim=-1)[:, None]
    noisy[after_eos] = torch.randint(1, 49000, (int(after_eos.sum()),))
    assert not torch.equal(noisy, tokens)
    with torch.no_grad():
        clean_out, noisy_out = model(images, tokens), model(images, noisy)
    for key, noisy_value, clean_value in zip(clean_out._fields, noisy_out, clean_out):
        torch.testing.assert_close(noisy_value, clean_value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_word_attention_is_zero_on_padding_and_sums_to_one(backbone):
    model = build_tiny(backbone).eval()
    tokens = tokens_for(TEXTS)
    with torch.no_grad():
        attention = model(_images(), tokens).word_attention
    padding = torch.arange(17)[None] > tokens.argmax(dim=-1)[:, None]
    assert torch.all(attention.masked_select(padding[:, None, :].expand_as(attention)) == 0)
    assert torch.all(attention.masked_select(~padding[:, None, :].expand_as(attention)) > 0)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(3, 4))


def test_query_scores_sum_to_one_and_weight_the_mask_probabilities():
    model = build_tiny().eval()
    with torch.no_grad():
        out = model(_images(), tokens_for(TEXTS))
    scores = out.query_scores
    torch.testing.assert_close(scores.sum(dim=-1), torch.ones(3))
    assert torch.all(scores > 0)
    assert out.query_masks.std(dim=1).mean() > 1e-2  # distinct masks, so the weighting is tested
    expected = (scores[:, :, None, None] * out.query_masks.sigmoid()).sum(dim=1, keepdim=True)  # Eq. 16
    torch.testing.assert_close(out.logits.sigmoid(), expected)


def test_logit_sum_weights_the_mask_logits():
    model = build_tiny(mask_sum="logit").eval()
    with torch.no_grad():
        out = model(_images(), tokens_for(TEXTS))
    expected = (out.query_scores[:, :, None, None] * out.query_masks).sum(dim=1, keepdim=True)
    torch.testing.assert_close(out.logits, expected)


def test_estimator_scores_queries_in_the_context_of_the_others():
    estimator = build_tiny().eval().estimator
    queries = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(0))
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        scores, permuted = estimator(queries).exp(), estimator(queries[:, order]).exp()
    assert scores.std(dim=-1).min() > 1e-3
    torch.testing.assert_close(permuted, scores[:, order])
    # Changing one query changes the scores of the others: they are judged together (MHSA).
    changed = queries.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        others = estimator(changed).exp()[:, 1:]
    assert not torch.allclose(others / others.sum(-1, keepdim=True), scores[:, 1:] / scores[:, 1:].sum(-1, keepdim=True))


def test_without_estimator_masks_are_averaged():
    model = with_distinct_queries(build_tiny(estimator=False), seed=1).eval()
    assert model.estimator is None
    with torch.no_grad():
        out = model(_images(), tokens_for(TEXTS))
    assert out.query_masks.std(dim=1).mean() > 1e-3  # the masks differ, so the mean is a real test
    torch.testing.assert_close(out.query_scores, torch.full((3, 4), 0.25))
    torch.testing.assert_close(out.logits.sigmoid(), out.query_masks.sigmoid().mean(dim=1, keepdim=True))


def test_without_multi_mask_the_scored_queries_make_one_mask():
    model = with_distinct_queries(build_tiny(multi_mask=False), seed=2).eval()
    images, tokens = _images(), tokens_for(TEXTS)
    seen = {}
    model.projector.register_forward_hook(lambda module, args, output: seen.update(f_s=args[0], query=args[1]))
    with torch.no_grad():
        out = model(images, tokens)
        visual = model.encode_image(images)
        f_t, _, padding = model.text_encoder(tokens)
        f_q, _ = model.query_generator(visual, f_t, padding)
        scores = model.estimator(f_q).exp()
        expected_query = (scores[:, :, None] * f_q).sum(dim=1, keepdim=True)  # Table 3: sum_n S_qn F_qn
    assert scores.std(dim=1).min() > 1e-2 and (f_q - f_q.mean(dim=1, keepdim=True)).abs().max() > 1e-2
    assert not torch.allclose(expected_query, f_q.mean(dim=1, keepdim=True), atol=1e-4)  # weighting matters
    assert out.query_masks.shape[1] == 1
    torch.testing.assert_close(seen["query"], expected_query)
    torch.testing.assert_close(out.logits, out.query_masks)
    torch.testing.assert_close(out.query_scores, scores)


def test_without_global_visual_feature_the_words_feed_eq_9_and_10_directly():
    model = build_tiny(global_visual=False).eval()
    assert model.image_encoder.proj_vg is None
    assert model.query_generator.proj_t is None and model.query_generator.proj_vg is None
    seen = {}
    model.text_encoder.register_forward_hook(lambda module, args, output: seen.update(f_t=output[0]))
    model.query_generator.proj_a.register_forward_hook(lambda module, args, output: seen.update(a_in=args[0]))
    model.query_generator.proj_tv.register_forward_hook(lambda module, args, output: seen.update(tv_in=args[0]))
    with torch.no_grad():
        out = model(_images(), tokens_for(TEXTS))
    assert out.logits.shape[0] == 3
    assert seen["a_in"] is seen["f_t"] and seen["tv_in"] is seen["f_t"]  # F_tv := F_t (Eq. 8 left out)


def test_single_query_has_no_estimator_and_weight_one():
    model = build_tiny(num_queries=1).eval()
    assert model.estimator is None
    with torch.no_grad():
        out = model(_images(), tokens_for(TEXTS))
    torch.testing.assert_close(out.query_scores, torch.ones(3, 1))
    torch.testing.assert_close(out.logits, out.query_masks)


ABLATIONS = list(itertools.product(BACKBONES, [1, 3], [True, False], [True, False], [True, False]))


@pytest.mark.parametrize("backbone,num_queries,multi_mask,estimator,global_visual", ABLATIONS)
def test_every_ablation_trains_every_parameter(backbone, num_queries, multi_mask, estimator, global_visual):
    model = build_tiny(
        backbone, num_queries=num_queries, multi_mask=multi_mask, estimator=estimator, global_visual=global_visual
    ).train()
    # open_clip starts each residual branch at zero (bn3.weight = 0), which blocks the gradient of
    # the branch until the first step; pretrained towers have no such zeros.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bn3.weight"):
                p.fill_(1.0)
    target = (random_images(3, seed=3)[:, :1] > 0).float()
    loss = mask_loss(model(_images(), tokens_for(TEXTS)).logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    silent = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert silent == []


@pytest.mark.parametrize("backbone", BACKBONES)
def test_eval_output_of_a_sample_does_not_depend_on_its_batch(backbone):
    model = build_tiny(backbone, no_target=True).eval()  # every output, the no-target logit too
    images, tokens = _images(), tokens_for(TEXTS)
    with torch.no_grad():
        together = model(images, tokens)
        alone = model(images[1:2], tokens[1:2])
        other_company = model(torch.cat([images[1:2], random_images(1, seed=2)]), tokens[1:3])
    for key in together._fields:
        torch.testing.assert_close(getattr(alone, key)[0], getattr(together, key)[1], msg=key)
        torch.testing.assert_close(getattr(other_company, key)[0], getattr(together, key)[1], msg=key)


def test_one_image_encoded_once_serves_many_expressions():
    model = build_tiny(no_target=True).eval()
    image, tokens = _images(1), tokens_for(TEXTS)
    with torch.no_grad():
        shared = model.decode(model.encode_image(image), tokens)
        repeated = model(image.expand(3, -1, -1, -1), tokens)
    for key, one, many in zip(shared._fields, shared, repeated):
        torch.testing.assert_close(one, many, msg=key)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 64, 48), (2, 1, 64, 64), (3, 64, 64)])
def test_image_of_the_wrong_size_gets_a_clear_error(shape):
    model = build_tiny()
    with pytest.raises(MMNetError, match=r"images must be B x 3 x 64 x 64 \(model.image_size=64\)"):
        model(torch.randn(*shape), tokens_for(TEXTS[:2]))


def test_tokens_longer_than_the_configured_length_get_a_clear_error():
    model = build_tiny()
    with pytest.raises(MMNetError, match=r"tokens must be B x 17 \(model.context_length=17\), got \(2, 22\)"):
        model(_images(2), tokens_for(TEXTS[:2], context_length=22))


def test_inputs_of_the_wrong_type_get_a_clear_error():
    model = build_tiny()
    with pytest.raises(MMNetError, match="images must be CLIP-normalised floats, got torch.uint8"):
        model(torch.zeros(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, dtype=torch.uint8), tokens_for(TEXTS[:2]))
    with pytest.raises(MMNetError, match="tokens must be integer ids"):
        model(_images(2), tokens_for(TEXTS[:2]).float())


def test_images_and_expressions_must_pair_up():
    model = build_tiny()
    with pytest.raises(MMNetError, match="2 images but 3 expressions"):
        model(_images(2), tokens_for(TEXTS))


def test_mask_loss_resizes_the_ground_truth_to_the_logits():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]]]])
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1  # top-left quadrant -> top-left logit, wholly covered after resizing
    mask[..., 2:, 2:] = 1  # bottom-right quadrant -> bottom-right logit
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
    # Worked out by hand: mean of log(1+e^-2), log(1+e^-1), log(1+e^0.5), log(2).
    by_hand = (0.126928 + 0.313262 + 0.974077 + 0.693147) / 4
    assert mask_loss(logits, mask).item() == pytest.approx(by_hand, abs=1e-5)
    assert mask_loss(logits, mask[:, 0]).item() == pytest.approx(expected.item())


def test_rn50_at_480_has_the_tensor_shapes_of_docs_model_md():
    from pathlib import Path

    from mmnet.build import build_mmnet
    from mmnet.config import load_config

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "refcoco_vit-b-16.yaml", ["model.backbone=RN50"]).model
    seen = {}
    with torch.device("meta"):  # shapes without memory or time
        model = build_mmnet(config, load_clip_weights=False)
        model.image_encoder.register_forward_hook(lambda m, a, out: seen.update(visual=out))
        model.text_encoder.register_forward_hook(lambda m, a, out: seen.update(text=out))
        model.fusion_neck.register_forward_hook(lambda m, a, out: seen.update(f_ot=out))
        model.query_generator.register_forward_hook(lambda m, a, out: seen.update(queries=out))
        model.decoder.register_forward_hook(lambda m, a, out: seen.update(f_s=out))
        model.projector.pixel.register_forward_hook(lambda m, a, out: seen.update(f_p=out))
        out = model(torch.empty(2, 3, 480, 480), torch.zeros(2, 17, dtype=torch.long))
    c = 512
    v = seen["visual"]
    assert [tuple(t.shape) for t in v] == [(2, c, 60, 60), (2, c, 30, 30), (2, c, 15, 15), (2, c)]
    f_t, f_tg, _ = seen["text"]
    assert tuple(f_t.shape) == (2, 17, 512) and tuple(f_tg.shape) == (2, 1024)
    assert tuple(seen["f_ot"].flatten(2).transpose(1, 2).shape) == (2, 900, c)
    f_q, attention = seen["queries"]
    assert tuple(attention.shape) == (2, 24, 17) and tuple(f_q.shape) == (2, 24, c)
    assert tuple(seen["f_s"].shape) == (2, c, 30, 30)
    assert tuple(seen["f_p"].shape) == (2, c // 2, 120, 120)
    assert tuple(out.query_masks.shape) == (2, 24, 120, 120) and tuple(out.logits.shape) == (2, 1, 120, 120)


@pytest.mark.parametrize("backbone", ["RN-tiny", "ViT-tiny"])
@pytest.mark.parametrize("seeds", [(0, 0), (4, 2)])
def test_the_distinct_queries_helper_makes_the_queries_differ(backbone, seeds):
    """Tests that tell queries apart rely on it: their word weights and scores must differ."""
    model = with_distinct_queries(build_tiny(backbone, seed=seeds[0], num_queries=5), seed=seeds[1]).eval()
    with torch.no_grad():
        out = model(random_images(2), tokens_for(["the blue triangle", "sandwich by fork"]))
    attention, scores = out.word_attention, out.query_scores
    assert (attention[:, 0] - attention[:, 1]).abs().amax() > 0.05
    assert (scores.amax(dim=1) - scores.amin(dim=1)).min() > 0.05
