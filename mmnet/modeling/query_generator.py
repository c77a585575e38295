"""Multi-Query Generator (Sec. 3.2, Eq. 6-10): N_q queries, each a weighting of the words chosen
by the image."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmnet.modeling.blocks import conv_bn_relu, linear_relu
from mmnet.modeling.fusion_neck import FusionNeck
from mmnet.modeling.image_encoder import VisualFeatures


class MultiQueryGenerator(nn.Module):
    """Dense visual features (Eq. 6-7) and fused textual features (Eq. 8) attend to each other to
    weight the words of each query (Eq. 9), and each query is its weighted sum of words (Eq. 10)."""

    def __init__(
        self,
        *,
        dense_neck: FusionNeck,
        dim: int,
        text_dim: int,
        num_queries: int,
        num_pixels: int,
        global_visual: bool,
        word_logit_scale: Optional[float],
    ) -> None:
        """
        Args:
            dense_neck: the text-free Fusion Neck of Eq. 6, with its own weights.
            dim: C.
            text_dim: C_text, the width of the word features F_t.
            num_queries: N_q.
            num_pixels: N = H3 * W3, the length of each flattened dense visual feature (Eq. 7).
            global_visual: fuse the global visual feature into the words (Eq. 8); off for the
                "w/o f_vg" ablation, where F_t itself stands for F_tv.
            word_logit_scale: Eq. 9 as the cosine of the two projections times a learnable
                temperature that starts at this value; None is the paper's plain product.
        """
        super().__init__()
        self.dense_neck = dense_neck
        # Eq. 7: three convolutions reduce F'_v to N_q maps.
        self.to_queries = nn.Sequential(
            conv_bn_relu(dim, dim // 2, kernel_size=3),
            conv_bn_relu(dim // 2, dim // 4, kernel_size=3),
            nn.Conv2d(dim // 4, num_queries, kernel_size=1),
        )
        if global_visual:
            self.proj_t = linear_relu(text_dim, dim)  # W_t
            self.proj_vg = linear_relu(dim, dim)  # W_vg
            word_dim = dim
        else:
            self.proj_t = self.proj_vg = None
            word_dim = text_dim
        self.proj_vd = linear_relu(num_pixels, dim)  # W_vd
        self.proj_a = linear_relu(word_dim, dim)  # W_a
        self.proj_tv = linear_relu(word_dim, dim)  # W_tv
        # Kept as a log so that the temperature stays positive (as CLIP's logit scale).
        self.log_word_scale = None if word_logit_scale is None else nn.Parameter(torch.tensor(math.log(word_logit_scale)))

    def forward(self, visual: VisualFeatures, f_t: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            visual: F_v2, F_v3, F_v4 and F_vg (F_vg only with the global visual feature).
            f_t: B x L x C_text word features.
            padding: B x L, True where a token follows [EOS].
        Returns:
            F_q: B x N_q x C, the queries; A: B x N_q x L, each query's weights over the words
            (0 on padding, summing to 1).
        """
        dense = self.dense_neck(visual.f_v2, visual.f_v3, visual.f_v4)  # Eq. 6
        f_vd = self.to_queries(dense).flatten(2)  # Eq. 7: B x N_q x N
        if self.proj_t is not None:
            f_tv = self.proj_t(f_t) * self.proj_vg(visual.f_vg)[:, None, :]  # Eq. 8
        else:
            f_tv = f_t
        visual_keys, word_keys = self.proj_vd(f_vd), self.proj_a(f_tv)
        if self.log_word_scale is None:
            logits = visual_keys @ word_keys.transpose(1, 2)  # Eq. 9
        else:
            # Eq. 9 on unit vectors: the plain product's spread over words is set by the features'
            # scale, which starts near 0 and so leaves every query the mean of its words.
            cosine = F.normalize(visual_keys, dim=-1, eps=1e-6) @ F.normalize(word_keys, dim=-1, eps=1e-6).transpose(1, 2)
            logits = self.log_word_scale.exp() * cosine  # Eq. 9, scaled cosine
        attention = logits.masked_fill(padding[:, None, :], float("-inf")).softmax(dim=-1)
        return attention @ self.proj_tv(f_tv), attention  # Eq. 10
