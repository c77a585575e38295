"""Shared test helpers: tiny MMNet configurations and tokens, built without downloads."""

from __future__ import annotations

import dataclasses

import open_clip
import pytest
import torch

from mmnet.config import ModelConfig

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


def tokens_for(texts: list[str], context_length: int = 17) -> torch.Tensor:
    return open_clip.tokenize(texts, context_length=context_length)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
