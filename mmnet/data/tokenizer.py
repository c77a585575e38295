"""Referring expressions to CLIP BPE tokens: [SOS] words [EOS], then zeros up to the context length."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import regex
import torch
from open_clip.tokenizer import SimpleTokenizer, basic_clean, whitespace_clean

from mmnet.data.errors import DataError


SOS = 49406
"""The id of [SOS], <start_of_text> in CLIP's vocabulary."""
EOS = 49407
"""The id of [EOS], <end_of_text>: the largest id of the vocabulary."""
_NAMES = {SOS: "[SOS]", EOS: "[EOS]"}


_INVISIBLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
"""Characters that show nothing: zero-width spaces and joiners, format and direction marks, the
byte-order mark, soft hyphens, variation selectors, Hangul fillers, tags. Unicode's
Default_Ignorable_Code_Point: all of category Cf but the few marks that are drawn (Arabic number
signs) or arrange what is drawn (interlinear annotations, hieroglyph controls)."""


def _clean(text: str) -> str:
    """CLIP's cleaning (ftfy, HTML entities, whitespace, lower case) with invisible characters
    taken out once entities and mojibake have become characters. A zero-width space marks where
    a word ends, as in Thai or Khmer, so it becomes a space; the others join or mark what is
    around them, so they go."""
    text = basic_clean(text).replace("\u200b", " ")
    return whitespace_clean(_INVISIBLE.sub("", text)).lower()


@lru_cache(maxsize=1)
def _clip_tokenizer() -> SimpleTokenizer:
    # The BPE vocabulary ships inside open_clip; nothing is downloaded.
    tokenizer = SimpleTokenizer()
    tokenizer.clean_fn = _clean
    return tokenizer


def word_tokens(text: str) -> int:
    """How many BPE tokens the words of an expression make, before [SOS] and [EOS]; 0 means it is empty."""
    return len(_clip_tokenizer().encode(text))


def tokenize(texts: str | Sequence[str], context_length: int, *, allow_empty: bool = False) -> torch.LongTensor:
    """Tokenises expressions for the CLIP text encoder.

    Args:
        texts: one expression or a sequence of B expressions.
        context_length: L, tokens per expression including [SOS] and [EOS] (17 RefCOCO/+, 22 G-Ref).
        allow_empty: let an empty expression through as [SOS][EOS] (for text-blind controls).
    Returns:
        B x L int64 tokens; an expression too long is cut so that [EOS] stays last.
    Raises DataError for an expression with no words unless allow_empty.
    """
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise DataError(f"context length must hold [SOS] and [EOS], got {context_length}")
    if not allow_empty:
        for text in texts:
            if not word_tokens(text):
                raise DataError(f"expression {text!r} is empty: it has no words to tokenise")
    return _clip_tokenizer()(list(texts), context_length=context_length)


def token_name(token: int) -> str:
    """A token id as text: 'blue', '[SOS]', '[EOS]' (the end-of-word mark dropped)."""
    return _NAMES.get(token) or _clip_tokenizer().decoder[token].replace("</w>", "")


def shortest_tokens(batch: int, context_length: int) -> torch.LongTensor:
    """B x L tokens of the empty expression, [SOS][EOS]: example inputs for tracing and counting."""
    tokens = torch.zeros(batch, context_length, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = SOS, EOS
    return tokens


def padding_mask(tokens: torch.Tensor) -> torch.Tensor:
    """
    Args:
        tokens: B x L token ids, [SOS] .. [EOS] then padding.
    Returns:
        B x L, True on the padding after [EOS]. [EOS] has the largest id of the vocabulary, so
        its position is the first argmax.
    """
    eos = tokens.argmax(dim=-1)
    return torch.arange(tokens.shape[-1], device=tokens.device) > eos[..., None]
