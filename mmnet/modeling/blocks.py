"""Small building blocks shared by the parts of MMNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_dim: int, out_dim: int, kernel_size: int = 1) -> nn.Sequential:
    """sigma(X W) of the paper for feature maps: a convolution, batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(inplace=True),
    )


def linear_relu(in_dim: int, out_dim: int) -> nn.Sequential:
    """sigma(X W) of the paper for vectors and token sequences."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True))


def he_init(module: nn.Module) -> None:
    """He (fan-in, ReLU gain) weights and zero biases for every convolution and linear layer of
    ``module``, Xavier for the attention projections; batch norms keep weight 1 and bias 0.

    The paper gives no initialisation. PyTorch's default draws weights with a sixth of He's
    variance (1 / (3 fan_in) against 2 / fan_in), which shrinks each layer's output and leaves
    the query generator's and the estimator's outputs alike across words and queries
    (docs/model.md has the figures).
    """
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(sub.weight, mode="fan_in", nonlinearity="relu")
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    for sub in module.modules():  # the attention projections feed no ReLU
        if isinstance(sub, Attention):
            for proj in (sub.q_proj, sub.k_proj, sub.v_proj, sub.out_proj):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)


def coordinates(batch: int, height: int, width: int, *, like: torch.Tensor) -> torch.Tensor:
    """F_coord of Eq. 5: B x 2 x H x W, each cell's x and y, running evenly from -1 (first row or
    column) to 1 (last)."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).expand(batch, 2, height, width)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B x N x C -> B x heads x N x C/heads."""
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """B x heads x N x C/heads -> B x N x C."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class Attention(nn.Module):
    """Multi-head attention with its own query, key and value projections, computed by
    scaled_dot_product_attention (Eq. 12)."""

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0) -> None:
        """
        Args:
            dim: width of queries, keys, values and output.
            num_heads: heads; dim must be a multiple of it.
            dropout: dropout on the attention weights while training.
        """
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query: B x Nq x C.
            key, value: B x Nk x C.
        Returns:
            B x Nq x C.
        """
        heads = self.num_heads
        out = F.scaled_dot_product_attention(  # Eq. 12
            split_heads(self.q_proj(query), heads),
            split_heads(self.k_proj(key), heads),
            split_heads(self.v_proj(value), heads),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(merge_heads(out))
