"""Training masks: which observed values to hide from the model so that it learns to produce them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

MASK_STRATEGIES = ("random", "historical", "block")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """Uniform draws from ``generator`` (on its own device), moved to ``device``."""
    source = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=source).to(device)


def random_hidden(observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """CSDI's random strategy: per sample a fraction r ~ U(0, 1); each observed value is hidden
    with probability r."""
    b = observed.shape[0]
    fraction = _uniform((b,), generator, observed.device).reshape(b, *([1] * (observed.ndim - 1)))
    return observed & (_uniform(tuple(observed.shape), generator, observed.device) < fraction)


def historical_hidden(observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Hide what another sample of the batch is missing (its missing pattern, CSDI's 'historical')."""
    b = observed.shape[0]
    if b < 2:
        return torch.zeros_like(observed)
    order = torch.argsort(_uniform((b,), generator, "cpu"))
    other = torch.empty(b, dtype=torch.long)
    other[order] = order.roll(1)
    return observed & ~observed[other.to(observed.device)]


def block_hidden(
    observed: Tensor,
    generator: torch.Generator | None = None,
    block_length: tuple[int, int] = (4, 16),
    all_features_prob: float = 0.5,
) -> Tensor:
    """Hide one contiguous block of steps: with probability ``all_features_prob`` the same block in
    every variable, otherwise a block of its own in each variable."""
    b, k, steps = observed.shape
    low, high = max(1, min(block_length[0], steps)), max(1, min(block_length[1], steps))
    u_len, u_start, u_all = (_uniform(shape, generator, observed.device) for shape in ((b, k), (b, k), (b, 1)))
    length = (low + (u_len * (high - low + 1)).floor().clamp(max=high - low)).long()
    start = (u_start * (steps - length + 1)).floor().long()
    same = u_all < all_features_prob
    length = torch.where(same, length[:, :1], length)
    start = torch.where(same, start[:, :1], start)
    pos = torch.arange(steps, device=observed.device)
    return observed & (pos >= start[..., None]) & (pos < (start + length)[..., None])


def _at_least_one(observed: Tensor, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
    """Samples with observed values but nothing hidden get one random observed value hidden."""
    b = observed.shape[0]
    empty = (hidden.reshape(b, -1).sum(1) == 0) & (observed.reshape(b, -1).sum(1) > 0)
    if not empty.any():
        return hidden
    score = torch.where(observed, _uniform(tuple(observed.shape), generator, observed.device), -1.0)
    pick = score.reshape(b, -1).argmax(1)
    extra = torch.zeros(b, observed[0].numel(), dtype=torch.bool, device=observed.device)
    extra[torch.arange(b, device=observed.device), pick] = True
    return hidden | (extra.reshape(observed.shape) & empty.reshape(b, *([1] * (observed.ndim - 1))))


class TrainingMasker:
    """Chooses what observed values to hide in training: per sample one strategy drawn with the
    given probabilities; a sample left with nothing hidden (historical pattern with no gaps, a
    block over missing steps) falls back to the random strategy, then to one hidden value."""

    def __init__(self, strategies: Mapping[str, float] | str, block_length: Sequence[int] = (4, 16)):
        probs = {strategies: 1.0} if isinstance(strategies, str) else {str(k): float(v) for k, v in strategies.items()}
        unknown = sorted(set(probs) - set(MASK_STRATEGIES))
        if unknown:
            raise ValueError(f"unknown training mask strategies {unknown}; choose from {MASK_STRATEGIES}")
        if any(p < 0 for p in probs.values()) or sum(probs.values()) <= 0:
            raise ValueError(f"training mask probabilities must be >= 0 with a positive sum, got {probs}")
        if len(block_length) != 2 or not 1 <= block_length[0] <= block_length[1]:
            raise ValueError(f"block_length must be [min, max] with 1 <= min <= max, got {list(block_length)}")
        total = sum(probs.values())
        self.names = [n for n in MASK_STRATEGIES if probs.get(n, 0) > 0]
        self.cumulative = torch.tensor(np.cumsum([probs[n] / total for n in self.names]), dtype=torch.float32)
        self.block_length = (int(block_length[0]), int(block_length[1]))

    def __call__(self, observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Boolean ``hidden`` [B, K, L], a subset of ``observed``."""
        observed = observed.bool()
        b = observed.shape[0]
        choice = torch.searchsorted(self.cumulative, _uniform((b,), generator, "cpu")).clamp(max=len(self.names) - 1)
        shape = (b, *([1] * (observed.ndim - 1)))
        hidden = torch.zeros_like(observed)
        for i, name in enumerate(self.names):
            picked = (choice == i).to(observed.device).reshape(shape)
            if not picked.any():
                continue
            if name == "random":
                candidate = random_hidden(observed, generator)
            elif name == "historical":
                candidate = historical_hidden(observed, generator)
            else:
                candidate = block_hidden(observed, generator, self.block_length)
            hidden = torch.where(picked, candidate, hidden)
        nothing = (hidden.reshape(b, -1).sum(1) == 0).reshape(shape)
        hidden = torch.where(nothing, random_hidden(observed, generator), hidden)
        return _at_least_one(observed, hidden, generator)
