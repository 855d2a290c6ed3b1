"""Denoiser wrappers: each takes a denoiser ``D(x_t, t, **cond) -> x0_hat`` and returns another
that changes its input or output (classifier-free guidance, a known region). The samplers see only
the outermost one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DenoiserFn = Callable[..., Tensor]


def guided(
    denoiser: DenoiserFn,
    guidance: float,
    uncond: dict[str, Tensor],
    interval: tuple[float, float] | None = None,
) -> DenoiserFn:
    """Classifier-free guidance: ``x0(uncond) + guidance * (x0(cond) - x0(uncond))``, both branches
    in one batched call; ``uncond`` is the null conditioning (or a negative prompt) per key of cond.
    ``interval=(t_low, t_high)``: guidance only at diffusion times within it (Kynkaenniemi et al.
    2024, "Applying guidance in a limited interval"); elsewhere the plain conditional estimate, at
    the cost of one network call instead of two."""
    if interval is not None:
        low, high = checked_interval(interval)

    def guided_denoiser(x_t: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        inside = torch.ones_like(t, dtype=torch.bool) if interval is None else (t >= low) & (t <= high)
        if not inside.any():
            return denoiser(x_t, t, **cond)
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        x0_c, x0_u = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        scale = torch.where(inside, guidance, 1.0).to(x0_c.dtype).reshape(-1, *([1] * (x0_c.dim() - 1)))
        return x0_u + scale * (x0_c - x0_u)

    return guided_denoiser


def checked_interval(interval) -> tuple[float, float]:
    """``interval`` as ``(t_low, t_high)`` floats, or a ValueError that says what is wrong."""
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be two times (t_low, t_high), got {interval!r}") from None
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"guidance interval must have 0 <= t_low < t_high <= 1 (1 = pure noise), got {interval!r}")
    return low, high


@dataclass
class KnownRegion:
    """Values held fixed where ``mask`` > 0 (inpainting, outpainting, imputation). Holding them in
    every clean estimate makes the next noisy state carry them re-noised to its noise level."""

    mask: Tensor
    values: Tensor

    def impose(self, x: Tensor) -> Tensor:
        return torch.where(self.mask > 0, self.values, x)

    def wrap(self, denoiser: DenoiserFn) -> DenoiserFn:
        """The denoiser whose clean estimates hold the known values."""

        def known_region_denoiser(x_t: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
            return self.impose(denoiser(x_t, t, **cond))

        return known_region_denoiser
