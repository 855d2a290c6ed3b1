"""Free text as conditioning: tokenizers (text -> padded id tensors) and text encoders (ids -> token
vectors for cross-attention and a pooled vector).

A prompt travels through the toolkit as ``tokens``, an int64 tensor ``[B, max_tokens]`` with
``PAD = 0`` after the last token. The empty prompt is all padding: it is the unconditional branch
of classifier-free guidance (``Domain.null_cond``) and what caption dropout trains.
"""

from toolkit.text.encoders import ENCODERS, TextEncoder, build_encoder
from toolkit.text.tokenizers import PAD, TOKENIZERS, Tokenizer, build_tokenizer

__all__ = ["ENCODERS", "PAD", "TOKENIZERS", "TextEncoder", "Tokenizer", "build_encoder", "build_tokenizer"]
