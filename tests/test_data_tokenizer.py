import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from mmnet.data.errors import DataError
from mmnet.data import tokenizer
from mmnet.data.tokenizer import padding_mask, shortest_tokens, token_name, tokenize, word_tokens

CLIP = SimpleTokenizer()
SOS, EOS = CLIP.sot_token_id, CLIP.eot_token_id


def test_expression_is_sos_words_eos_then_zeros():
    tokens = tokenize("the blue triangle", 17)
    words = CLIP.encode("the blue triangle")
    assert tokens.shape == (1, 17) and tokens.dtype == torch.long
    assert tokens[0].tolist() == [SOS, *words, EOS] + [0] * (17 - 2 - len(words))


def test_batch_has_one_row_per_expression_at_the_context_length():
    tokens = tokenize(["man on the left", "the small red circle left of the blue square"], 22)
    assert tokens.shape == (2, 22)
    assert (tokens[:, 0] == SOS).all()
    assert [(row == EOS).nonzero().item() for row in tokens] == [
        1 + len(CLIP.encode("man on the left")),
        1 + len(CLIP.encode("the small red circle left of the blue square")),
    ]


def test_long_expression_is_cut_keeping_eos_last():
    text = " ".join(["zebra"] * 40)
    tokens = tokenize(text, 17)[0]
    assert tokens[0] == SOS and tokens[-1] == EOS
    assert tokens[1:-1].tolist() == CLIP.encode(text)[:15]


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "&nbsp;", "\ufeff", "\x00"])
def test_empty_expression_is_refused_naming_it(text):
    with pytest.raises(DataError, match="empty") as err:
        tokenize(["a dog", text], 17)
    assert repr(text) in str(err.value)


def test_word_tokens_counts_bpe_tokens_without_sos_and_eos():
    assert word_tokens("the blue triangle") == len(CLIP.encode("the blue triangle")) == 3
    assert word_tokens("&nbsp;") == 0


def test_empty_expression_on_purpose_is_sos_eos():
    tokens = tokenize(["", "a dog"], 17, allow_empty=True)
    assert tokens[0].tolist() == [SOS, EOS] + [0] * 15
    assert tokens[1, 0] == SOS


def test_padding_is_every_token_after_eos():
    # "the blue triangle" is 3 words: [SOS] 3 words [EOS] at 0..4, padding at 5..7; [SOS][EOS] pads from 2.
    tokens = tokenize(["the blue triangle", ""], 8, allow_empty=True)
    assert padding_mask(tokens).tolist() == [[False] * 5 + [True] * 3, [False] * 2 + [True] * 6]


def test_special_ids_and_token_names_are_the_tokenizers_own():
    assert (tokenizer.SOS, tokenizer.EOS) == (SOS, EOS) and EOS == max(CLIP.decoder)
    tokens = tokenize("the blue triangle", 8)[0].tolist()
    assert [token_name(t) for t in tokens[:5]] == ["[SOS]", "the", "blue", "triangle", "[EOS]"]
    assert shortest_tokens(2, 5).tolist() == [[SOS, EOS, 0, 0, 0]] * 2


@pytest.mark.parametrize("text", ["\u200b", "\ufeff \u200d", "&#8203;", "\u2060\u3164\u00ad"])
def test_expression_of_invisible_characters_only_is_refused_as_empty(text):
    with pytest.raises(DataError, match="empty") as err:
        tokenize(text, 17)
    assert repr(text) in str(err.value)


def test_zero_width_space_breaks_words_and_joiners_vanish():
    # A zero-width space is where a reader sees one word end; a joiner or soft hyphen joins.
    assert tokenize("blue\u200btriangle", 17).equal(tokenize("blue triangle", 17))
    assert tokenize("blue\u2060tri\u00adangle\u200d", 17).equal(tokenize("bluetriangle", 17))
    assert not tokenize("blue triangle", 17).equal(tokenize("bluetriangle", 17))
