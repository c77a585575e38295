"""Tiny MMNet configurations and tokens for tests, built without downloads."""

from __future__ import annotations

import dataclasses

import open_clip
import torch

from mmnet.build import build_mmnet
from mmnet.config import ModelConfig
from mmnet.modeling import MMNet
from mmnet.modeling.image_encoder import ViTImageEncoder

TINY_IMAGE_SIZE = 64


def tiny_model_config(backbone: str = "RN-tiny", **changes) -> ModelConfig:
    """A small MMNet on a tiny CLIP tower, fast enough to run forward and backward in tests."""
    config = ModelConfig(
        backbone=backbone,
        image_size=TINY_IMAGE_SIZE,
        context_length=17,
        hidden_dim=32,
        num_heads=4,
        ffn_dim=64,
        decoder_layers=2,
        dropout=0.0,
        num_queries=4,
    )
    return dataclasses.replace(config, **changes)


def build_tiny(backbone: str = "RN-tiny", *, seed: int = 0, **changes) -> MMNet:
    """The tiny MMNet with random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return build_mmnet(tiny_model_config(backbone, **changes))


def random_images(batch: int, *, seed: int = 1, size: int = TINY_IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tokens_for(texts: list[str], context_length: int = 17) -> torch.Tensor:
    return open_clip.tokenize(texts, context_length=context_length)


def with_distinct_queries(model: MMNet, *, seed: int = 0) -> MMNet:
    """Perturbs the query generator and the estimator so that the queries differ.

    At random initialisation A (Eq. 9) is nearly uniform, so every query is nearly the mean of
    the words, and MHSA in Eq. 15 then averages them again: all scores equal 1/N_q. A test that
    must tell the queries apart needs them to differ; this gives them that, deterministically.
    """
    # The ViT tower's features are larger: at 0.5 its word weights saturate on one word, the
    # same for every query, and the queries are equal again; at 0.25 they differ, but by less, so
    # the estimator needs a larger push for its scores to differ.
    vit = isinstance(model.image_encoder, ViTImageEncoder)
    scale, estimator_scale = (0.25, 1.5) if vit else (0.5, 1.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.query_generator.named_parameters():
            if not name.startswith(("dense_neck", "proj_tv")):
                p.add_(scale * torch.randn(p.shape, generator=generator))
        if model.estimator is not None:
            for p in model.estimator.parameters():
                p.add_(estimator_scale * torch.randn(p.shape, generator=generator))
    return model
