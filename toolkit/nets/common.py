"""Building blocks every denoiser network shares: the diffusion-time embedding and zero-init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TIME_SCALE = 1000.0


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style features of times ``t`` [B] in [0, 1] (scaled by TIME_SCALE) -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float() * TIME_SCALE)[:, None] * freqs[None]
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so that the output or residual branch it ends starts at 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention of tokens ``x`` [B, N, dim] over a ``context`` [B, K,
    context_dim] (or over themselves when ``context`` is None), as a residual branch whose output
    layer starts at zero, so that adding it leaves a network's function unchanged at initialisation.
    ``mask`` [B, K] is True where a key may be attended; every row needs at least one True."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(context_dim, 2 * dim)
        self.out = zero_init(nn.Linear(dim, dim))

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        h = self.norm(x)
        k, v = self.key_value(h if context is None else context).chunk(2, -1)
        b, d = x.shape[0], x.shape[-1]
        q, k, v = (z.reshape(b, z.shape[1], self.heads, d // self.heads).transpose(1, 2) for z in (self.query(h), k, v))
        attn_mask = None if mask is None else mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return x + self.out(attended.transpose(1, 2).reshape(b, -1, d))


def text_conditioning(config: dict | None, emb_dim: int) -> tuple[nn.Module | None, nn.Module | None, int | None]:
    """A net's text layers from a ``text_encoder`` config: the encoder, the projection of the prompt's
    pooled vector onto the net's conditioning embedding (``emb_dim`` wide), and the width of the token
    vectors to cross-attend to; all None without a config.

    The projection starts random, as a class embedding does, not at zero: through it the prompt moves
    the net and the encoder gets gradients from the first step (the cross-attention branches start at
    zero, so a zero projection would leave the encoder untrained until it grew). Measured on
    ``audio_prompts`` at 1,000 steps: the right word in 20 of 30 samples, against 6 of 30 zero-initialised."""
    if config is None:
        return None, None, None
    from toolkit.text.encoders import build_encoder

    encoder = build_encoder(config)
    return encoder, nn.Linear(encoder.dim, emb_dim), encoder.dim


def encode_prompt(encoder: nn.Module | None, tokens: Tensor | None, batch: int, net: str):
    """A net's text conditioning: ``encoder(tokens)`` (sequence, mask, pooled), the empty prompt when
    ``tokens`` is None, or None for a net built without a text encoder (which then refuses tokens)."""
    if encoder is None:
        if tokens is not None:
            raise ValueError(
                f"this {net} was built without a text encoder (text_encoder=None) but got prompt tokens; "
                "build it with a text_encoder config (conf/text_encoder) to condition on prompts"
            )
        return None
    return encoder.encode(tokens, batch)
