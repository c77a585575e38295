"""Mask Decoder (Sec. 3.4): the Multi-Mask Projector makes one mask per query (Eq. 14) and the
Multi-Query Estimator scores the queries (Eq. 15). Beyond the paper, the no-target head says
whether the expression refers to anything at all (generalized referring segmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmnet.modeling.blocks import Attention


class MultiMaskProjector(nn.Module):
    """Upsamples F_s to F_p (stride 4) and convolves it with a 3 x 3 kernel and a bias made from
    each query (dynamic convolution), all queries of all images in one grouped convolution."""

    def __init__(self, *, dim: int) -> None:
        """
        Args:
            dim: C; F_p has C_p = C / 2 channels.
        """
        super().__init__()
        self.pixel_dim = dim // 2
        # F_p stays signed (no ReLU): the kernels are ReLU'd (Eq. 14), so negative mask logits
        # must come from negative features.
        self.pixel = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(dim, self.pixel_dim, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(self.pixel_dim),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )
        self.kernel = nn.Linear(dim, 9 * self.pixel_dim + 1)  # W_p

    def forward(self, f_s: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """
        Args:
            f_s: B x C x H3 x W3, the decoder's output.
            queries: B x M x C, one mask per query.
        Returns:
            B x M x 4H3 x 4W3 mask logits.
        """
        f_p = self.pixel(f_s)  # Eq. 14
        batch, channels, height, width = f_p.shape
        count = queries.shape[1]
        params = F.relu(self.kernel(queries))  # Eq. 14: F_pn = sigma(W_p F_qn)
        if torch.onnx.is_in_onnx_export():
            return _dynamic_conv_by_patches(f_p, params)
        weight = params[..., :-1].reshape(batch * count, channels, 3, 3)
        bias = params[..., -1].reshape(batch * count)
        masks = F.conv2d(f_p.reshape(1, batch * channels, height, width), weight, bias, padding=1, groups=batch)
        return masks.view(batch, count, height, width)


def _dynamic_conv_by_patches(f_p: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The same 3 x 3 dynamic convolution as a product with the nine shifted copies of F_p.

    An ONNX convolution fixes its number of groups when exported, which would fix the batch size;
    this form leaves the batch free. ``params``: B x M x (9 C_p + 1), kernels laid out as
    (channel, row, column) and the bias last.
    """
    batch, channels, height, width = f_p.shape
    padded = F.pad(f_p, (1, 1, 1, 1))
    shifted = [padded[:, :, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    patches = torch.stack(shifted, dim=2).reshape(batch, channels * 9, height * width)
    masks = torch.bmm(params[..., :-1], patches) + params[..., -1:]
    return masks.view(batch, -1, height, width)


class MultiQueryEstimator(nn.Module):
    """Scores each query in the context of the others: S_q = softmax(W_s MHSA(F_q)) (Eq. 15), or
    with the residual softmax(W_s (F_q + MHSA(F_q))); returns log S_q."""

    def __init__(self, *, dim: int, num_heads: int, dropout: float, residual: bool) -> None:
        """
        Args:
            dim: C.
            num_heads: heads of the MHSA.
            dropout: on the attention weights while training.
            residual: W_s reads F_q + MHSA(F_q). Without it (Eq. 15 as written) the attention
                mixes the queries before they are scored, so alike queries get alike scores.
        """
        super().__init__()
        self.attn = Attention(dim, num_heads, dropout=dropout)
        self.residual = residual
        # W_s, without a bias: one shared offset on every query's logit leaves the softmax
        # unchanged, so its gradient is zero and it could never learn.
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, f_q: torch.Tensor) -> torch.Tensor:
        """
        Args:
            f_q: B x N_q x C.
        Returns:
            log S_q: B x N_q, the log of scores that sum to 1 over the queries (Eq. 15); the
            log keeps the probability mixture of Eq. 16 exact where a score underflows.
        """
        mixed = self.attn(f_q, f_q, f_q)
        if self.residual:
            mixed = mixed + f_q
        return self.score(mixed).squeeze(-1).log_softmax(dim=-1)  # Eq. 15


class NoTargetHead(nn.Module):
    """The logit that an expression refers to nothing in the image (gRefCOCO's "no target").

    It reads what the mask decoder already holds: the estimator's view of the queries (their
    score-weighted sum, Sigma_n S_n F_qn), the decoder's output F_s pooled over the image (its
    largest and its mean activation per channel: whether any place answers the expression), and
    the mask's own evidence (the largest probability of y). An MLP of one hidden layer of C units makes
    the logit. Not in the paper; docs/model.md, "Extensions".
    """

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * dim + 1, dim), nn.ReLU(inplace=True), nn.Linear(dim, 1))

    def forward(self, f_s: torch.Tensor, f_q: torch.Tensor, scores: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            f_s: B x C x H3 x W3, the decoder's output.
            f_q: B x N_q x C, the queries.
            scores: B x N_q, S_q.
            logits: B x 1 x h x w, the final mask's logits.
        Returns:
            B no-target logits.
        """
        query = (scores[:, :, None].to(f_q.dtype) * f_q).sum(dim=1)
        pooled = f_s.flatten(2)
        evidence = logits.flatten(1).amax(dim=1, keepdim=True).float().sigmoid().to(f_q.dtype)
        features = torch.cat([query, pooled.amax(dim=2), pooled.mean(dim=2), evidence], dim=1)
        return self.mlp(features).squeeze(1)
