"""Vision-Language Decoder (Sec. 3.3, Eq. 11-13): visual tokens attend to themselves, then to the
generated queries."""

from __future__ import annotations

import torch
from torch import nn

from mmnet.modeling.blocks import Attention
from mmnet.modeling.position_encoding import sine_1d, sine_2d


class DecoderLayer(nn.Module):
    """One pre-norm transformer layer: self-attention on the visual tokens (Eq. 11), cross-attention
    from them to the queries and an MLP (Eq. 13), each added back to its input."""

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        """
        Args:
            dim: C.
            num_heads: attention heads.
            ffn_dim: hidden width of the MLP.
            dropout: dropout on attention weights and on every residual branch.
        """
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, vis: torch.Tensor, vis_pos: torch.Tensor, queries: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """
        Args:
            vis: B x N x C visual tokens; vis_pos: N x C.
            queries: B x N_q x C; query_pos: N_q x C.
        Returns:
            B x N x C.
        """
        x = self.norm_self(vis)
        vis = vis + self.dropout(self.self_attn(x + vis_pos, x + vis_pos, x))  # Eq. 11
        vis = vis + self.dropout(self.cross_attn(self.norm_cross(vis) + vis_pos, queries + query_pos, queries))  # Eq. 13
        return vis + self.dropout(self.mlp(self.norm_mlp(vis)))  # Eq. 13


class VisionLanguageDecoder(nn.Module):
    """A stack of decoder layers with sine positional encodings on the visual tokens (2-D) and the
    queries (1-D); the last layer's output is F_s (Eq. 13)."""

    def __init__(self, *, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(
            DecoderLayer(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout) for _ in range(num_layers)
        )

    def forward(self, f_vt: torch.Tensor, f_q: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """
        Args:
            f_vt: B x N x C, the flattened output of the Fusion Neck (F_ot), N = H3 * W3.
            f_q: B x N_q x C, the generated queries.
            size: (H3, W3).
        Returns:
            F_s: B x C x H3 x W3.
        """
        height, width = size
        vis_pos = sine_2d(height, width, self.dim, like=f_vt)
        query_pos = sine_1d(f_q.shape[1], self.dim, like=f_q)
        x = f_vt
        for layer in self.layers:
            x = layer(x, vis_pos, f_q, query_pos)
        return x.transpose(1, 2).reshape(x.shape[0], self.dim, height, width)
