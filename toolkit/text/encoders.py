"""Text encoders: ``tokens`` [B, L] -> (sequence [B, 1 + L, dim], mask [B, 1 + L], pooled [B, dim]).

Every kind turns tokens into vectors its own way (``token_features``) and shares the rest: a linear
projection to ``dim``, a learned start token at position 0 (so even the empty prompt leaves one key
to attend to), learned positions, a small trainable transformer with the padding mask, and a final
LayerNorm. ``mask`` is True where a position may be attended (the start token and the prompt's
tokens); ``pooled`` is the mean of the sequence over those positions. The nets cross-attend to the
sequence and add the pooled vector to their time embedding.

Kinds (``text_encoder.kind``, conf/text_encoder):

- ``wordllama``: the frozen 32,000 x 256 token embeddings that ship inside the ``wordllama`` wheel,
  held as a buffer that checkpoints do not carry (it is reloaded from the wheel);
- ``learned``: byte embeddings trained from scratch with the model;
- ``hf``: a frozen Hugging Face ``transformers`` encoder from a local folder (``path``), likewise
  kept out of checkpoints and reloaded from the folder.
"""

from __future__ import annotations

import importlib.resources
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.nets.common import CrossAttention
from toolkit.text.hf import hf_folder
from toolkit.text.tokenizers import PAD, ByteTokenizer, check_kind


class TransformerBlock(nn.Module):
    """Pre-norm self-attention over the prompt's positions (padding masked out), then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention = CrossAttention(dim, dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        h = self.attention(h, mask=mask)
        return h + self.mlp(self.norm(h))


class TextEncoder(nn.Module):
    """The shared part of every kind; subclasses give ``token_features`` (tokens -> [B, L, features])."""

    kind = "base"

    def __init__(
        self,
        features: int,
        max_tokens: int = 32,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"text_encoder.dim ({dim}) must be divisible by text_encoder.heads ({heads})")
        if layers < 0:
            raise ValueError(f"text_encoder.layers must be >= 0, got {layers}")
        self.max_tokens, self.dim = max_tokens, dim
        self.projection = nn.Linear(features, dim)
        self.start = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.positions = nn.Parameter(torch.randn(1 + max_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout) for _ in range(layers))
        self.norm_out = nn.LayerNorm(dim)

    def token_features(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``tokens`` [B, max_tokens] -> the start token and the prompt's vectors [B, 1 + L, dim], their mask
        [B, 1 + L] and the pooled vector [B, dim]. L is the longest prompt of the batch: the columns after it
        hold only padding, which every key mask drops anyway, so cutting them changes no result (beyond
        floating-point rounding) and saves the nets' cross-attention and this encoder most of their work
        (6% of a training step of ``image_prompts``, whose captions use a quarter of the 32 columns)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.max_tokens:
            raise ValueError(
                f"tokens must have shape [B, max_tokens={self.max_tokens}], got {tuple(tokens.shape)}; "
                "tokenize prompts with the model's own tokenizer (Domain.tokenize)"
            )
        present = tokens != PAD
        used = present.any(dim=0).nonzero()
        length = int(used.max()) + 1 if len(used) else 0
        tokens, present = tokens[:, :length].long(), present[:, :length]
        features = self.projection(self.token_features(tokens)).masked_fill(~present[..., None], 0.0)
        start = self.start.expand(tokens.shape[0], 1, self.dim)
        h = torch.cat([start, features], dim=1) + self.positions[: 1 + tokens.shape[1]]
        mask = torch.cat([present.new_ones(present.shape[0], 1), present], dim=1)
        for block in self.blocks:
            h = block(h, mask)
        h = self.norm_out(h)
        weights = mask[..., None].to(h.dtype)
        pooled = (h * weights).sum(1) / weights.sum(1)
        return h, mask, pooled

    def encode(self, tokens: Tensor | None, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """``forward`` of ``batch`` prompts; ``tokens=None`` is the empty prompt for all of them."""
        if tokens is None:
            tokens = torch.full((batch, self.max_tokens), PAD, dtype=torch.long, device=self.start.device)
        if tokens.shape[0] != batch:
            raise ValueError(f"tokens must have one row per sample ({batch}), got shape {tuple(tokens.shape)}")
        return self(tokens)


@cache
def wordllama_table() -> Tensor:
    """WordLlama's 32,000 x 256 token embeddings (float16 in the wheel) as float32."""
    from safetensors.torch import load_file

    path = importlib.resources.files("wordllama") / "weights" / "l2_supercat_256.safetensors"
    return load_file(str(path))["embedding.weight"].float()


class WordLlamaEncoder(TextEncoder):
    """Frozen pretrained token embeddings from the wheel; row 0 (our padding id) is zeros."""

    kind = "wordllama"

    def __init__(self, **options):
        table = wordllama_table()
        super().__init__(features=table.shape[1], **options)
        self.register_buffer("table", torch.cat([torch.zeros(1, table.shape[1]), table]), persistent=False)

    def token_features(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.table)


class LearnedEncoder(TextEncoder):
    """Byte embeddings trained from scratch: no vocabulary and no pretrained weights."""

    kind = "learned"

    def __init__(self, dim: int = 128, **options):
        super().__init__(features=dim, dim=dim, **options)
        self.embedding = nn.Embedding(ByteTokenizer.vocab_size, dim, padding_idx=PAD)

    def token_features(self, tokens: Tensor) -> Tensor:
        return self.embedding(tokens)


class HFEncoder(TextEncoder):
    """A frozen Hugging Face encoder's last hidden states. The model is kept outside this module's
    parameters and state_dict (reloaded from ``path``; always in eval mode); ``_apply`` moves it
    with the module."""

    kind = "hf"

    def __init__(self, path: str | None = None, **options):
        folder = hf_folder(path)
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder).eval().requires_grad_(False)
        super().__init__(features=model.config.hidden_size, **options)
        self.__dict__["frozen"] = model  # not a submodule: no parameters, no state_dict entries

    def _apply(self, fn, recurse=True):
        self.frozen._apply(fn)
        return super()._apply(fn, recurse)

    def token_features(self, tokens: Tensor) -> Tensor:
        present = tokens != PAD
        with torch.no_grad():
            hidden = self.frozen(input_ids=(tokens - 1).clamp(min=0), attention_mask=present.long())
        return hidden.last_hidden_state.masked_fill(~present[..., None], 0.0)


ENCODERS: dict[str, type[TextEncoder]] = {"wordllama": WordLlamaEncoder, "learned": LearnedEncoder, "hf": HFEncoder}
OPTIONS = ("max_tokens", "dim", "layers", "heads", "dropout")


def build_encoder(config: dict) -> TextEncoder:
    """The text encoder of a ``text_encoder`` config (conf/text_encoder): ``kind``, ``max_tokens``,
    ``dim``, ``layers``, ``heads``, ``dropout``, and for ``hf`` the model's ``path``."""
    kind = check_kind(config)
    unknown = sorted(set(config) - {"kind", "path", *OPTIONS})
    if unknown:
        raise ValueError(f"unknown text_encoder keys {unknown}; known: kind, path, {', '.join(OPTIONS)}")
    options = {key: config[key] for key in OPTIONS if config.get(key) is not None}
    if kind == "hf":
        options["path"] = config.get("path")
    return ENCODERS[kind](**options)
