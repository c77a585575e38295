"""Text Encoder (Sec. 3.1): CLIP's text transformer over [SOS] .. [EOS] and padding."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mmnet.data.tokenizer import padding_mask


class TextFeatures(NamedTuple):
    words: torch.Tensor
    """F_t: B x L x C_text, every token after the final layer norm."""
    sentence: torch.Tensor
    """F_tg: B x C', the [EOS] token, projected."""
    padding: torch.Tensor
    """B x L, True after [EOS]."""


class TextEncoder(nn.Module):
    """Word features F_t (every token after the final layer norm) and the global feature F_tg
    (the [EOS] token, projected), as in CLIP and CRIS."""

    def __init__(self, *, clip: nn.Module) -> None:
        """
        Args:
            clip: an open_clip CLIP built for the working expression length L.
        """
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("causal_mask", clip.attn_mask, persistent=False)
        self.width = clip.ln_final.normalized_shape[0]
        self.output_dim = clip.text_projection.shape[1] if isinstance(clip.text_projection, torch.Tensor) else clip.text_projection.out_features

    def forward(self, tokens: torch.Tensor) -> TextFeatures:
        """
        Args:
            tokens: B x L token ids, [SOS] .. [EOS] then padding. [EOS] has the largest id of
                the vocabulary, so its position is the first argmax.
        """
        x = self.token_embedding(tokens) + self.positional_embedding.to(self.token_embedding.weight.dtype)
        # The causal mask keeps every token up to [EOS] blind to the padding that follows it.
        f_t = self.ln_final(self.transformer(x, attn_mask=self.causal_mask))
        eos = tokens.argmax(dim=-1)
        f_eos = f_t[torch.arange(tokens.shape[0], device=tokens.device), eos]
        if isinstance(self.text_projection, nn.Linear):
            f_tg = self.text_projection(f_eos)
        else:
            f_tg = f_eos @ self.text_projection
        return TextFeatures(words=f_t, sentence=f_tg, padding=padding_mask(tokens))
