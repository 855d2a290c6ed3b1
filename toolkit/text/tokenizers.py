"""Tokenizers: a list of prompts -> ``[B, max_tokens]`` int64 ids, ``PAD = 0`` after the text.

Every tokenizer normalises a prompt the same way first (``normalize``: lower case, runs of white
space as one space, no leading or trailing space), so "Seven,  spoken SLOWLY" and "seven, spoken
slowly" are the same prompt. A prompt longer than ``max_tokens`` is an error, not cut short.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Sequence
from functools import cache

import torch
from torch import Tensor

from toolkit.text.hf import hf_folder

PAD = 0


def normalize(text: str) -> str:
    """The form every tokenizer reads: lower case, single spaces, trimmed."""
    return " ".join(text.lower().split())


class Tokenizer:
    """Base: ``tokenizer(texts) -> LongTensor [len(texts), max_tokens]``; ids are in
    ``[0, vocab_size)``, 0 only as padding. Subclasses implement ``ids`` (one normalised,
    non-empty text -> its ids, each >= 1)."""

    kind = "base"
    vocab_size: int

    def __init__(self, max_tokens: int = 32):
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"text_encoder.max_tokens must be a positive integer, got {max_tokens!r}")
        self.max_tokens = max_tokens

    def ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def __call__(self, texts: Sequence[str] | str) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.max_tokens), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"prompts must be strings; prompt {row} is {type(text).__name__}: {text!r}")
            text = normalize(text)
            ids = self.ids(text) if text else []
            if len(ids) > self.max_tokens:
                raise ValueError(
                    f"prompt {text!r} has {len(ids)} tokens, more than text_encoder.max_tokens={self.max_tokens}; "
                    "shorten it (or train with a larger text_encoder.max_tokens)"
                )
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens (id = byte + 1): no vocabulary to ship, any language, any spelling."""

    kind = "learned"
    vocab_size = 257

    def ids(self, text: str) -> list[int]:
        return [byte + 1 for byte in text.encode("utf-8")]


@cache
def _wordllama_tokenizer():
    from tokenizers import Tokenizer as HFTokenizer

    path = importlib.resources.files("wordllama") / "tokenizers" / "l2_supercat_tokenizer_config.json"
    return HFTokenizer.from_file(str(path))


class WordLlamaTokenizer(Tokenizer):
    """The SentencePiece tokenizer that ships inside the ``wordllama`` wheel (LLaMA-2's 32,000
    pieces), without the begin/end markers; ids are shifted by one so that 0 stays the padding."""

    kind = "wordllama"
    vocab_size = 32001

    def ids(self, text: str) -> list[int]:
        return [i + 1 for i in _wordllama_tokenizer().encode(text, add_special_tokens=False).ids]


class HFTokenizer(Tokenizer):
    """The tokenizer saved with a local Hugging Face model (``text_encoder.path``), with its special
    tokens (e.g. BERT's [CLS] and [SEP]) since its model expects them; ids shifted by one past padding."""

    kind = "hf"

    def __init__(self, max_tokens: int = 32, path: str | None = None):
        super().__init__(max_tokens)
        folder = hf_folder(path)
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(folder)
        self.vocab_size = len(self.hf) + 1

    def ids(self, text: str) -> list[int]:
        return [i + 1 for i in self.hf(text)["input_ids"]]


TOKENIZERS: dict[str, Callable[..., Tokenizer]] = {
    "learned": ByteTokenizer,
    "wordllama": WordLlamaTokenizer,
    "hf": HFTokenizer,
}


def check_kind(config: dict) -> str:
    """The ``kind`` of a ``text_encoder`` config, or ValueError listing the kinds."""
    kind = config.get("kind")
    if kind not in TOKENIZERS:
        raise ValueError(f"text_encoder.kind={kind!r} is not valid; choose one of {sorted(TOKENIZERS)}")
    return kind


def build_tokenizer(config: dict) -> Tokenizer:
    """The tokenizer of a ``text_encoder`` config (``kind``, ``max_tokens``, for hf ``path``; conf/text_encoder)."""
    kind = check_kind(config)
    options = {"path": config.get("path")} if kind == "hf" else {}
    return TOKENIZERS[kind](max_tokens=config.get("max_tokens", 32), **options)
