"""Denoiser wrappers: each takes a denoiser ``D(x_t, t, **cond) -> x0_hat`` and returns another
that changes its input or output (classifier-free guidance, a known region). The samplers see only
the outermost one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DenoiserFn = Callable[..., Tensor]


def guided(denoiser: DenoiserFn, guidance: float, uncond: dict[str, Tensor]) -> DenoiserFn:
    """Classifier-free guidance: ``x0(uncond) + guidance * (x0(cond) - x0(uncond))``, both branches
    in one batched call; ``uncond`` is the null conditioning (or a negative prompt) per key of cond."""

    def guided_denoiser(x_t: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        x0_c, x0_u = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        return x0_u + guidance * (x0_c - x0_u)

    return guided_denoiser


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
