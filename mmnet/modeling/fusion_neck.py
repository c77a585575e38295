"""Fusion Neck (Sec. 3.1, Eq. 2-5), and the same network without text for the dense visual
features of the Multi-Query Generator (Sec. 3.2, Eq. 6)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmnet.modeling.blocks import conv_bn_relu, coordinates, linear_relu


class FusionNeck(nn.Module):
    """Fuses F_v2, F_v3, F_v4 (and, when built with ``text_dim``, the global textual feature
    F_tg) into one stride-16 map: F_ot before flattening (Eq. 5), or F'_v (Eq. 6) without text.
    Each learnable matrix W of the paper is a 1 x 1 convolution with batch norm."""

    def __init__(self, *, dim: int, text_dim: Optional[int] = None) -> None:
        """
        Args:
            dim: C, the width of the visual features in and of the map out.
            text_dim: C' of F_tg for the Fusion Neck; None for the text-free copy of Eq. 6.
        """
        super().__init__()
        self.proj_v4 = conv_bn_relu(dim, dim)  # W_v4
        self.proj_tg = linear_relu(text_dim, dim) if text_dim is not None else None  # W_tg
        self.proj_m4 = conv_bn_relu(dim, dim)  # W_m4
        self.proj_v3 = conv_bn_relu(dim, dim)  # W_v3
        self.proj_m3 = conv_bn_relu(2 * dim, dim)  # W_m3
        self.proj_v2 = conv_bn_relu(dim, dim)  # W_v2
        self.aggregate = conv_bn_relu(5 * dim, dim)
        self.coord_conv = conv_bn_relu(dim + 2, dim, kernel_size=3)

    def forward(self, f_v2: torch.Tensor, f_v3: torch.Tensor, f_v4: torch.Tensor, f_tg: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            f_v2: B x C x 2H3 x 2W3.
            f_v3: B x C x H3 x W3.
            f_v4: B x C x H3/2 x W3/2.
            f_tg: B x C', given exactly when the neck was built with ``text_dim``.
        Returns:
            B x C x H3 x W3.
        """
        size = f_v3.shape[-2:]
        m4 = self.proj_v4(f_v4)
        if self.proj_tg is not None:
            m4 = m4 * self.proj_tg(f_tg)[:, :, None, None]  # Eq. 2: sigma(F_v4 W_v4) . sigma(F_tg W_tg)
        m4 = F.interpolate(m4, size=size, mode="bilinear", align_corners=False)  # Eq. 2: Up(.) (Eq. 6 without F_tg)
        m3 = torch.cat([self.proj_m4(m4), self.proj_v3(f_v3)], dim=1)  # Eq. 3
        f_v2_pooled = F.avg_pool2d(f_v2, kernel_size=2, stride=2)
        m2 = torch.cat([self.proj_m3(m3), self.proj_v2(f_v2_pooled)], dim=1)  # Eq. 3
        f_m = self.aggregate(torch.cat([m2, m3, m4], dim=1))  # Eq. 4
        batch, _, height, width = f_m.shape
        return self.coord_conv(torch.cat([f_m, coordinates(batch, height, width, like=f_m)], dim=1))  # Eq. 5
