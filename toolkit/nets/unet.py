"""A 2D UNet denoiser for any grid-shaped data: images [C, H, W], mel spectrograms [1, mels, frames].

``net(x_t, t, label=None, tokens=None) -> prediction`` with ``t`` in [0, 1]. Time (and, when
``num_classes > 0``, class; with a text encoder, the prompt's pooled vector) embeddings modulate
every residual block by scale and shift; with a text encoder the features also cross-attend to the
prompt's tokens wherever they self-attend. Normalisation is GroupNorm, so each sample's output
depends on that sample alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.nets.common import CrossAttention, encode_prompt, sinusoidal_embedding, text_conditioning, zero_init


class ResBlock(nn.Module):
    """Two 3x3 convolutions; the embedding sets a per-channel scale and shift after the second norm."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all positions of a feature map, as a residual."""

    def __init__(self, channels: int, groups: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class MapCrossAttention(CrossAttention):
    """``CrossAttention`` of a feature map's positions [B, C, H, W] over the prompt's tokens."""

    def __init__(self, channels: int, context_dim: int, head_channels: int = 32):
        super().__init__(channels, context_dim, max(1, channels // head_channels))

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        attended = super().forward(x.flatten(2).transpose(1, 2), context, mask)
        return attended.transpose(1, 2).reshape(b, c, h, w)


def downsample(channels: int) -> nn.Module:
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Nearest-neighbour doubling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """Container of one resolution's residual blocks, each followed by attention or an identity
    (and, with ``context_dim``, cross-attention to the prompt after each self-attention);
    ``UNet.forward`` runs them, since down and up levels route skip connections differently."""

    def __init__(
        self,
        channels: Sequence[tuple[int, int]],
        emb_dim: int,
        groups: int,
        dropout: float,
        attend: bool,
        context_dim: int | None = None,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(i, o, emb_dim, groups, dropout) for i, o in channels)
        self.attention = nn.ModuleList(SelfAttention(o, groups) if attend else nn.Identity() for _, o in channels)
        if attend and context_dim:
            self.cross_attention = nn.ModuleList(MapCrossAttention(o, context_dim) for _, o in channels)
        else:
            self.cross_attention = None

    def step(self, index: int, h: Tensor, emb: Tensor, text: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
        """Residual block ``index``, its self-attention and, given the prompt, its cross-attention."""
        h = self.attention[index](self.blocks[index](h, emb))
        if self.cross_attention is not None and text is not None:
            h = self.cross_attention[index](h, text[0], text[1])
        return h


class UNet(nn.Module):
    """Denoiser ``net(x_t [B,C,H,W], t [B], label=None, tokens=None) -> [B, out_channels, H, W]``.

    ``channel_mults`` sets the width of each level (``base_channels * mult``); between levels the
    resolution halves, so H and W must be divisible by ``2 ** (len(channel_mults) - 1)``.
    ``attention_levels`` lists the level indices that get self-attention. With ``num_classes > 0``
    the class embedding has ``num_classes + 1`` rows; the last one is the null class used for
    classifier-free guidance and for ``label=None``. ``middle_attention`` adds self-attention to the
    two blocks at the lowest resolution. ``text_encoder`` (a conf/text_encoder config) adds a text
    encoder, cross-attention at the attention levels and in the middle, and the prompt's pooled
    vector to the time embedding (both zero at initialisation); ``tokens=None`` is then the empty
    prompt. Without it, no text layers exist.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (),
        num_classes: int = 0,
        dropout: float = 0.0,
        groups: int = 8,
        middle_attention: bool = True,
        text_encoder: dict | None = None,
    ):
        super().__init__()
        mults = tuple(int(m) for m in channel_mults)
        attention_levels = tuple(int(i) for i in attention_levels)
        if not mults or min(mults) < 1:
            raise ValueError(f"channel_mults must be a non-empty list of positive ints, got {list(mults)}")
        widths = [base_channels * m for m in mults]
        if any(w % groups for w in widths):
            raise ValueError(
                f"every level width base_channels*mult {widths} must be divisible by groups={groups}; "
                "change base_channels or groups"
            )
        bad_levels = [i for i in attention_levels if not 0 <= i < len(mults)]
        if bad_levels:
            raise ValueError(f"attention_levels {bad_levels} out of range: there are {len(mults)} levels")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")

        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes
        self.size_multiple = 2 ** (len(mults) - 1)
        self.time_features = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.text_encoder, self.text_pooled, context_dim = text_conditioning(text_encoder, emb_dim)

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down_levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_widths = [base_channels]
        width = base_channels
        for level, level_width in enumerate(widths):
            pairs = []
            for _ in range(num_res_blocks):
                pairs.append((width, level_width))
                width = level_width
                skip_widths.append(width)
            self.down_levels.append(Level(pairs, emb_dim, groups, dropout, level in attention_levels, context_dim))
            if level < len(widths) - 1:
                self.downsamples.append(downsample(width))
                skip_widths.append(width)

        self.middle = Level([(width, width), (width, width)], emb_dim, groups, dropout, middle_attention, context_dim)

        self.up_levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(widths))):
            pairs = []
            for _ in range(num_res_blocks + 1):
                pairs.append((width + skip_widths.pop(), widths[level]))
                width = widths[level]
            self.up_levels.append(Level(pairs, emb_dim, groups, dropout, level in attention_levels, context_dim))
            if level > 0:
                self.upsamples.append(Upsample(width))

        self.output_norm = nn.GroupNorm(groups, width)
        self.output_conv = zero_init(nn.Conv2d(width, self.out_channels, 3, padding=1))

    def embedding(self, t: Tensor, label: Tensor | None, batch: int) -> Tensor:
        t = torch.as_tensor(t, device=self.input_conv.weight.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(batch)
        if t.numel() != batch:
            raise ValueError(f"t must have one time per sample ({batch}), got shape {tuple(t.shape)}")
        emb = self.time_mlp(sinusoidal_embedding(t.reshape(batch), self.time_features))
        if self.class_embedding is None:
            if label is not None:
                raise ValueError("this UNet is unconditional (num_classes=0) but a label was given")
            return emb
        if label is None:
            label = torch.full((batch,), self.num_classes, dtype=torch.long, device=emb.device)
        label = label.reshape(-1).long()
        if label.numel() != batch or label.min() < 0 or label.max() > self.num_classes:
            raise ValueError(
                f"labels must be {batch} ints in [0, {self.num_classes}] ({self.num_classes} = null), "
                f"got {label.tolist()}"
            )
        return emb + self.class_embedding(label)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None, tokens: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"input size {height}x{width} must be divisible by {self.size_multiple} "
                f"(2 ** (number of levels - 1)); pad or resize the input, or use fewer channel_mults"
            )
        text = encode_prompt(self.text_encoder, tokens, x.shape[0], "UNet")
        emb = self.embedding(t, label, x.shape[0])
        if text is not None:
            emb = emb + self.text_pooled(text[2])

        h = self.input_conv(x)
        skips = [h]
        for index, level in enumerate(self.down_levels):
            for block in range(len(level.blocks)):
                h = level.step(block, h, emb, text)
                skips.append(h)
            if index < len(self.downsamples):
                h = self.downsamples[index](h)
                skips.append(h)

        for block in range(len(self.middle.blocks)):
            h = self.middle.step(block, h, emb, text)

        for index, level in enumerate(self.up_levels):
            for block in range(len(level.blocks)):
                h = level.step(block, torch.cat([h, skips.pop()], dim=1), emb, text)
            if index < len(self.upsamples):
                h = self.upsamples[index](h)

        return self.output_conv(F.silu(self.output_norm(h)))
