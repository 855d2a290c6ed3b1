"""A permutation-equivariant transformer denoiser for point clouds [B, N, 3].

Each point is embedded by a small MLP and the points attend to each other with plain multi-head
self-attention. Nothing encodes a point's index, so permuting the input points permutes the output
the same way: the network sees a set, as a point cloud is. Time and class condition every block by
adaptive LayerNorm (DiT's adaLN-Zero: a per-sample shift, scale and residual gate from the
conditioning embedding, zero at initialisation so every block starts as the identity). With a text
encoder, the prompt's pooled vector joins that embedding and every block's points cross-attend to
the prompt's tokens after their self-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.nets.common import CrossAttention, encode_prompt, sinusoidal_embedding, text_conditioning, zero_init


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return h * (1 + scale) + shift


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, dropout: float) -> Tensor:
    """Multi-head attention of queries [B, Q, D] over keys and values [B, K, D] -> [B, Q, D]."""
    b, d = q.shape[0], q.shape[-1]
    q, k, v = (z.reshape(b, z.shape[1], heads, d // heads).transpose(1, 2) for z in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).transpose(1, 2).reshape(b, -1, d)


class PointBlock(nn.Module):
    """Pre-norm attention and MLP over the points, each modulated and gated by the conditioning.

    With ``num_latents = 0`` every point attends to every point (cost O(N^2)). With ``num_latents
    = M > 0`` the attention goes through M learned inducing points (Set Transformer's ISAB, Lee
    et al. 2019): the inducing points gather from all points, then every point reads from them,
    cost O(N M). Both are equivariant to the order of the points. With ``context_dim`` the points
    then cross-attend to the prompt's tokens.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        num_latents: int = 0,
        context_dim: int | None = None,
    ):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm_attention = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        if num_latents > 0:
            self.latents = nn.Parameter(torch.randn(num_latents, dim) * dim**-0.5)
            self.latent_query = nn.Linear(dim, dim)
            self.latent_kv = nn.Linear(dim, 2 * dim)
        else:
            self.latents = None
        self.attention_out = nn.Linear(dim, dim)
        self.cross_attention = CrossAttention(dim, context_dim, heads) if context_dim else None
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.modulation = zero_init(nn.Linear(dim, 6 * dim))

    def forward(self, h: Tensor, cond: Tensor, text: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(F.silu(cond))[:, None].chunk(6, -1)
        q, k, v = self.qkv(modulate(self.norm_attention(h), shift_a, scale_a)).chunk(3, -1)
        dropout = self.dropout if self.training else 0.0
        if self.latents is not None:
            gathered = attend(self.latent_query(self.latents + cond[:, None]), k, v, self.heads, dropout)
            k, v = self.latent_kv(gathered).chunk(2, -1)
        h = h + gate_a * self.attention_out(attend(q, k, v, self.heads, dropout))
        if self.cross_attention is not None and text is not None:
            h = self.cross_attention(h, text[0], text[1])
        return h + gate_m * self.mlp(modulate(self.norm_mlp(h), shift_m, scale_m))


class PointTransformer(nn.Module):
    """Denoiser ``net(x_t [B, N, 3], t [B], label=None, tokens=None) -> [B, N, 3]``, equivariant to point order.

    ``t`` is in [0, 1]. With ``num_classes > 0`` the class table has ``num_classes + 1`` rows; the
    last is the null class, used for classifier-free guidance and when ``label`` is None. The output
    layer starts at zero, so an untrained network predicts 0 for every point. ``num_latents > 0``
    replaces full self-attention (O(N^2)) by attention through that many inducing points (O(N M)).
    ``text_encoder`` (a conf/text_encoder config) adds a text encoder, cross-attention in every block
    and the prompt's pooled vector to the conditioning (both zero at initialisation); ``tokens=None``
    is then the empty prompt. Without it, no text layers exist.
    """

    def __init__(
        self,
        num_classes: int = 0,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        num_latents: int = 0,
        point_dim: int = 3,
        fourier_bands: int = 0,
        text_encoder: dict | None = None,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if fourier_bands < 0:
            raise ValueError(f"fourier_bands must be >= 0, got {fourier_bands}")
        self.num_classes, self.dim, self.point_dim = num_classes, dim, point_dim
        self.register_buffer("frequencies", torch.pi * 2.0 ** torch.arange(fourier_bands), persistent=False)
        features = point_dim * (1 + 2 * fourier_bands)
        self.point_embedding = nn.Sequential(nn.Linear(features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embedding = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.text_encoder, self.text_pooled, context_dim = text_conditioning(text_encoder, dim)
        self.blocks = nn.ModuleList(
            PointBlock(dim, heads, mlp_ratio, dropout, num_latents, context_dim) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = zero_init(nn.Linear(dim, 2 * dim))
        self.out = zero_init(nn.Linear(dim, point_dim))

    def condition(self, t: Tensor, label: Tensor | None) -> Tensor:
        """The per-sample conditioning vector [B, dim]: time embedding plus class embedding."""
        cond = self.time_embedding(sinusoidal_embedding(t, self.dim))
        if self.class_embedding is None:
            if label is not None:
                raise ValueError("this network is unconditional (num_classes=0) but got a label")
            return cond
        if label is None:
            label = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
        if label.shape != t.shape:
            raise ValueError(f"label must have shape [B] = {tuple(t.shape)}, got {tuple(label.shape)}")
        if bool(((label < 0) | (label > self.num_classes)).any()):
            raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = null class)")
        return cond + self.class_embedding(label)

    def coordinate_features(self, x: Tensor) -> Tensor:
        """Each point's coordinates, with ``fourier_bands`` octaves of sines and cosines of them
        (NeRF's encoding), which let the embedding resolve fine offsets near a surface."""
        if not len(self.frequencies):
            return x
        angles = (x[..., None] * self.frequencies.to(x.dtype)).flatten(-2)
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None, tokens: Tensor | None = None) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.point_dim:
            raise ValueError(f"expected points of shape [B, N, {self.point_dim}], got {tuple(x.shape)}")
        t = t.to(x.dtype).expand(x.shape[0]) if t.ndim == 0 else t.to(x.dtype)
        text = encode_prompt(self.text_encoder, tokens, x.shape[0], "PointTransformer")
        cond = self.condition(t, label)
        if text is not None:
            cond = cond + self.text_pooled(text[2])
        h = self.point_embedding(self.coordinate_features(x))
        for block in self.blocks:
            h = block(h, cond, text)
        shift, scale = self.modulation_out(F.silu(cond))[:, None].chunk(2, -1)
        return self.out(modulate(self.norm_out(h), shift, scale))
