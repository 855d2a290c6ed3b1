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
