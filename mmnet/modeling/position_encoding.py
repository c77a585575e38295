"""Sine positional encodings added to the decoder's visual tokens and queries (Sec. 3.3)."""

from __future__ import annotations

import math

import torch


def _frequencies(count: int, *, like: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    return temperature ** (torch.arange(count, device=like.device, dtype=torch.float32) / count)


def sine_1d(length: int, dim: int, *, like: torch.Tensor) -> torch.Tensor:
    """Encodings of positions 0 .. length-1 as in the original transformer: length x dim."""
    positions = torch.arange(length, device=like.device, dtype=torch.float32)[:, None]
    angles = positions / _frequencies(dim // 2, like=like)
    return torch.cat([angles.sin(), angles.cos()], dim=1).to(like.dtype)


def sine_2d(height: int, width: int, dim: int, *, like: torch.Tensor) -> torch.Tensor:
    """Encodings of a height x width grid, half the channels for y and half for x, each coordinate
    normalised to (0, 2 pi]: (height * width) x dim, row-major like a flattened feature map."""
    quarter = dim // 4
    freqs = _frequencies(quarter, like=like)
    ys = torch.arange(1, height + 1, device=like.device, dtype=torch.float32) * (2 * math.pi / height)
    xs = torch.arange(1, width + 1, device=like.device, dtype=torch.float32) * (2 * math.pi / width)
    y_angles = (ys[:, None] / freqs)[:, None, :].expand(height, width, quarter)
    x_angles = (xs[:, None] / freqs)[None, :, :].expand(height, width, quarter)
    encoding = torch.cat([y_angles.sin(), y_angles.cos(), x_angles.sin(), x_angles.cos()], dim=-1)
    return encoding.reshape(height * width, 4 * quarter).to(like.dtype)
