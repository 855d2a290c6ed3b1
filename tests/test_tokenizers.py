"""Tokenizers: prompts -> padded ids, the empty prompt as all padding, clear errors."""

import pytest
import torch

from toolkit.domains.base import Domain
from toolkit.text import PAD, build_tokenizer


@pytest.mark.parametrize("kind", ["wordllama", "learned"])
def test_prompts_become_padded_ids_and_the_empty_prompt_is_all_padding(kind):
    tokenize = build_tokenizer({"kind": kind, "max_tokens": 24})
    tokens = tokenize(["seven, spoken slowly", "", "   "])
    assert tokens.shape == (3, 24) and tokens.dtype == torch.long
    assert (tokens[0] != PAD).sum() > 0 and (tokens[0] < tokenize.vocab_size).all()
    assert (tokens[1:] == PAD).all()
    used = int((tokens[0] != PAD).sum())
    assert (tokens[0, :used] != PAD).all() and (tokens[0, used:] == PAD).all()


@pytest.mark.parametrize("kind", ["wordllama", "learned"])
def test_case_and_spacing_do_not_change_a_prompt(kind):
    tokenize = build_tokenizer({"kind": kind, "max_tokens": 32})
    assert torch.equal(tokenize(["Seven,  spoken SLOWLY "]), tokenize(["seven, spoken slowly"]))
    assert not torch.equal(tokenize(["seven"]), tokenize(["eight"]))


def test_wordllama_pieces_are_the_shipped_vocabulary_shifted_past_padding():
    tokenize = build_tokenizer({"kind": "wordllama", "max_tokens": 8})
    ids = tokenize("a river")[0]
    assert ids[:2].tolist() == [263 + 1, 8580 + 1]  # '▁a', '▁river' in LLaMA-2's vocabulary


def test_a_prompt_longer_than_max_tokens_is_an_error_not_cut_short():
    tokenize = build_tokenizer({"kind": "learned", "max_tokens": 4})
    with pytest.raises(ValueError, match="max_tokens=4"):
        tokenize(["seven"])
    with pytest.raises(TypeError, match="prompt 1 is int"):
        tokenize(["one", 2])
    with pytest.raises(ValueError, match="text_encoder.kind='bert'"):
        build_tokenizer({"kind": "bert"})


def test_a_domain_without_captions_refuses_prompts_and_nulls_tokens():
    domain = Domain()
    with pytest.raises(ValueError, match="not trained with captions"):
        domain.tokenize(["seven"])
    domain.text_encoder = {"kind": "learned", "max_tokens": 8}
    tokens = domain.tokenize(["seven", ""])
    null = domain.null_cond({"tokens": tokens})
    assert (null["tokens"] == PAD).all() and null["tokens"].shape == tokens.shape
