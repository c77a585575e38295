"""Image Encoder (Sec. 3.1): multi-scale visual features and the global visual feature of CLIP."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmnet.modeling.blocks import merge_heads, split_heads


class VisualFeatures(NamedTuple):
    """The projected visual features of Sec. 3.1, with H3 = H/16 for an H x W input."""

    f_v2: torch.Tensor
    """B x C x 2H3 x 2W3, from x2."""
    f_v3: torch.Tensor
    """B x C x H3 x W3, from x3."""
    f_v4: torch.Tensor
    """B x C x H3/2 x W3/2, from z."""
    f_vg: Optional[torch.Tensor]
    """B x C, from z-bar; None when the model is built without the global visual feature."""

    def take(self, index: torch.Tensor) -> "VisualFeatures":
        """The features of images ``index`` (E ids, repeats allowed): one row per expression
        when E expressions share fewer images."""
        return VisualFeatures(*(f.index_select(0, index.to(f.device)) if f is not None else None for f in self))


class ImageEncoder(nn.Module):
    """A CLIP image tower and the learnable projections of Sec. 3.1.

    Subclasses compute x2, x3, z and z-bar from their tower (``clip_features``); this class
    projects them to F_v2, F_v3, F_v4 and F_vg.
    """

    def __init__(self, *, tower: nn.Module, channels: tuple[int, int, int], global_dim: int, dim: int, with_global: bool) -> None:
        """
        Args:
            tower: the CLIP image tower (open_clip's ``visual``).
            channels: channels of x2, x3 and z.
            global_dim: channels of z-bar.
            dim: C, the width the features are projected to.
            with_global: whether to project z-bar to F_vg (off for the "w/o f_vg" ablation).
        """
        super().__init__()
        self.tower = tower
        self.proj_v2 = nn.Conv2d(channels[0], dim, 1)
        self.proj_v3 = nn.Conv2d(channels[1], dim, 1)
        self.proj_v4 = nn.Conv2d(channels[2], dim, 1)
        self.proj_vg = nn.Linear(global_dim, dim) if with_global else None

    def clip_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            images: B x 3 x H x W, CLIP-normalised.
        Returns:
            x2 (B x C2 x 2H3 x 2W3), x3 (B x C3 x H3 x W3), z (B x C4 x H3/2 x W3/2) and z-bar
            (B x C4), where H3 = H/16 for ResNets and H/patch for ViTs.
        """
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> VisualFeatures:
        x2, x3, z, z_bar = self.clip_features(images)
        f_vg = self.proj_vg(z_bar) if self.proj_vg is not None else None
        return VisualFeatures(self.proj_v2(x2), self.proj_v3(x3), self.proj_v4(z), f_vg)


class ResNetImageEncoder(ImageEncoder):
    """CLIP's modified ResNet: x2 and x3 from stages 2 and 3, z and z-bar from its attention pool."""

    def __init__(self, *, tower: nn.Module, dim: int, with_global: bool) -> None:
        stage2, stage3 = tower.layer2[-1].conv3.out_channels, tower.layer3[-1].conv3.out_channels
        super().__init__(
            tower=tower,
            channels=(stage2, stage3, tower.output_dim),
            global_dim=tower.output_dim,
            dim=dim,
            with_global=with_global,
        )

    def _attention_pool(self, x4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1: [z-bar, z] = MHSA([mean(x4), x4]) with CLIP's attention-pool weights."""
        pool = self.tower.attnpool
        batch, _, height, width = x4.shape
        tokens = x4.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + pool.positional_embedding.to(tokens.dtype)
        q, k, v = (split_heads(proj(tokens), pool.num_heads) for proj in (pool.q_proj, pool.k_proj, pool.v_proj))
        out = pool.c_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))  # Eq. 1
        z = out[:, 1:].transpose(1, 2).reshape(batch, -1, height, width)
        return z, out[:, 0]

    def clip_features(self, images):
        tower = self.tower
        x = tower.layer1(tower.stem(images))
        x2 = tower.layer2(x)
        x3 = tower.layer3(x2)
        z, z_bar = self._attention_pool(tower.layer4(x3))
        return x2, x3, z, z_bar


class ViTImageEncoder(ImageEncoder):
    """CLIP's ViT: the class token gives z-bar, the patch tokens z; three convolutions turn z
    (stride = patch) into the three scales that stand for x2, x3 and x4 (end of Sec. 3.1)."""

    def __init__(self, *, tower: nn.Module, dim: int, with_global: bool) -> None:
        width = tower.output_dim
        super().__init__(tower=tower, channels=(width, width, width), global_dim=width, dim=dim, with_global=with_global)
        self.to_stride_8 = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
        self.to_stride_16 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.to_stride_32 = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)

    def patch_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            images: B x 3 x H x W.
        Returns:
            z, the patch tokens after ``ln_post`` and ``proj`` as a B x C4 x H3 x W3 grid, and
            z-bar, the class token's (B x C4), which is CLIP's image embedding.
        """
        tower = self.tower
        patches = tower.conv1(images)
        batch, _, height, width = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        cls = tower.class_embedding.to(tokens.dtype).expand(batch, 1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + tower.positional_embedding.to(tokens.dtype)
        tokens = tower.transformer(tower.ln_pre(tokens))
        tokens = tower.ln_post(tokens) @ tower.proj
        return tokens[:, 1:].transpose(1, 2).reshape(batch, -1, height, width), tokens[:, 0]

    def clip_features(self, images):
        z, z_bar = self.patch_features(images)
        return self.to_stride_8(z), self.to_stride_16(z), self.to_stride_32(z), z_bar
