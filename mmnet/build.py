"""Builds MMNet from a model config: the CLIP towers by name (with their pretrained weights, when
asked for), the heads at the configured sizes."""

from __future__ import annotations

import torch

from mmnet import weights
from mmnet.backbones import clip_model_config
from mmnet.config import ModelConfig
from mmnet.modeling.blocks import he_init
from mmnet.modeling.clip import create_clip, is_resnet
from mmnet.modeling.decoder import VisionLanguageDecoder
from mmnet.modeling.fusion_neck import FusionNeck
from mmnet.modeling.image_encoder import ResNetImageEncoder, ViTImageEncoder
from mmnet.modeling.mask_decoder import MultiMaskProjector, MultiQueryEstimator, NoTargetHead
from mmnet.modeling.mmnet import MMNet
from mmnet.modeling.query_generator import MultiQueryGenerator
from mmnet.modeling.text_encoder import TextEncoder


def build_mmnet(config: ModelConfig, *, load_clip_weights: bool = True) -> MMNet:
    """MMNet for ``config``; with ``load_clip_weights`` (and ``config.clip_weights`` set) the
    towers start from the pretrained CLIP weights, otherwise from random ones."""
    config.validate()
    clip = create_clip(
        clip_model_config(config.backbone),
        image_size=config.image_size,
        context_length=config.context_length,
        quick_gelu=config.quick_gelu,
    )
    if load_clip_weights and config.clip_weights:
        weights.load_clip_weights(clip, config.clip_weights, backbone=config.backbone, quick_gelu=config.quick_gelu)
    dim = config.hidden_dim
    if is_resnet(clip):
        image_encoder = ResNetImageEncoder(tower=clip.visual, dim=dim, with_global=config.global_visual)
        grid = config.image_size // 16
    else:
        image_encoder = ViTImageEncoder(tower=clip.visual, dim=dim, with_global=config.global_visual)
        grid = config.image_size // clip.visual.patch_size[0]
    text_encoder = TextEncoder(clip=clip)
    query_generator = MultiQueryGenerator(
        dense_neck=FusionNeck(dim=dim),
        dim=dim,
        text_dim=text_encoder.width,
        num_queries=config.num_queries,
        num_pixels=grid * grid,
        global_visual=config.global_visual,
        word_logit_scale=config.word_logit_scale,
    )
    use_estimator = config.estimator and config.num_queries > 1
    model = MMNet(
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        fusion_neck=FusionNeck(dim=dim, text_dim=text_encoder.output_dim),
        query_generator=query_generator,
        decoder=VisionLanguageDecoder(
            dim=dim,
            num_layers=config.decoder_layers,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            dropout=config.dropout,
        ),
        projector=MultiMaskProjector(dim=dim),
        estimator=(
            MultiQueryEstimator(dim=dim, num_heads=config.num_heads, dropout=config.dropout, residual=config.estimator_residual)
            if use_estimator
            else None
        ),
        image_size=config.image_size,
        context_length=config.context_length,
        num_queries=config.num_queries,
        multi_mask=config.multi_mask,
        mask_sum=config.mask_sum,
    )
    if config.init == "he":
        for head in (model.query_generator, model.projector, model.estimator):
            if head is not None:
                he_init(head)
    if config.no_target:
        # Drawn after every other weight, which are then those of the same seed's single-target model.
        model.no_target_head = NoTargetHead(dim=dim)
        if config.init == "he":
            he_init(model.no_target_head)
    # Convolution weights in channels_last: a ResNet tower's convolutions then run on NHWC
    # activations from its first layer on, which benchmarks/inference.py measures as faster
    # (docs/performance.md); the outputs are the same within fp32 rounding.
    return model.to(memory_format=torch.channels_last)
