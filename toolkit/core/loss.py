"""The training objective: draw t and noise, regress the chosen target, weight by logSNR, count
only the elements a mask marks as valid. Works on tensors of any rank ``[B, ...]``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from toolkit.core.denoiser import append_dims, check_prediction, target_of
from toolkit.core.schedule import Schedule

WEIGHTINGS = ("uniform", "min_snr", "edm")


def x0_space_weight(weighting: str, logsnr: Tensor, min_snr_gamma: float = 5.0, sigma_data: float = 0.5) -> Tensor:
    """Weight of the squared x0 error as a function of logSNR.

    - ``min_snr``: ``min(snr, gamma)`` (Hang et al. 2023).
    - ``edm``: ``1 / c_out^2 = snr + 1 / sigma_data^2`` (Karras et al. 2022), so that the
      effective regression target has unit variance.
    """
    snr = logsnr.exp()
    if weighting == "min_snr":
        return snr.clamp(max=min_snr_gamma)
    if weighting == "edm":
        return snr + 1 / sigma_data**2
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")


def target_weight(
    weighting: str, target: str, logsnr: Tensor, min_snr_gamma: float = 5.0, sigma_data: float = 0.5
) -> Tensor:
    """Per-sample weight of the squared error of ``target``.

    ``uniform`` is 1 on whatever is predicted. The others are defined on the x0 error and
    carried over exactly: |x0 err|^2 = |eps err|^2 / snr = |v err|^2 / (1 + snr).
    """
    if weighting == "uniform":
        return torch.ones_like(logsnr)
    w = x0_space_weight(weighting, logsnr, min_snr_gamma, sigma_data)
    snr = logsnr.exp()
    if target == "eps":
        return w / snr
    if target == "v":
        return w / (1 + snr)
    return w


def masked_mean_per_sample(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``err`` over all but the batch dimension, counting only where mask is 1."""
    dims = tuple(range(1, err.ndim))
    if mask is None:
        return err.mean(dim=dims)
    mask = mask.to(err.dtype).expand_as(err)
    return (err * mask).sum(dim=dims) / mask.sum(dim=dims).clamp_min(1.0)


def diffusion_loss(
    net: Callable[..., Tensor],
    x0: Tensor,
    schedule: Schedule,
    target: str = "v",
    weighting: str = "uniform",
    mask: Tensor | None = None,
    cond: dict[str, Tensor] | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    min_snr_gamma: float = 5.0,
    sigma_data: float = 0.5,
    t_eps: float = 1e-5,
) -> Tensor:
    """Weighted denoising loss, averaged over the batch.

    ``net(x_t, t, **cond)`` predicts ``target`` (eps, x0 or v). ``t`` defaults to uniform draws
    in [t_eps, 1 - t_eps]; ``noise`` to standard normal. ``mask`` (broadcastable to x0, 1 = counts)
    restricts the error to valid or target elements: a sample with an empty mask contributes 0.
    """
    check_prediction(target)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    batch = x0.shape[0]
    if t is None:
        t = torch.rand(batch, device=x0.device, generator=generator, dtype=x0.dtype) * (1 - 2 * t_eps) + t_eps
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    alpha, sigma = schedule.alpha_sigma(t)
    a, s = append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim)
    x_t = a * x0 + s * noise
    pred = net(x_t, t, **(cond or {}))
    err = (pred - target_of(target, x0, noise, a, s)) ** 2
    weight = target_weight(weighting, target, schedule.logsnr(t), min_snr_gamma, sigma_data)
    return (weight * masked_mean_per_sample(err, mask)).mean()
