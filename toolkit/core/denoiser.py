"""Network parametrisations: what a network predicts (eps, x0 or v) and the one wrapper that
turns its output into the denoiser ``D(x_t, t, **cond) -> x0_hat`` that samplers consume."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from toolkit.core.schedule import Schedule

PREDICTIONS = ("eps", "x0", "v")


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample tensor [B] so that it broadcasts against a tensor of rank ``ndim``."""
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction target {prediction!r}; choose one of {PREDICTIONS}")
    return prediction


def target_of(prediction: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target for a network predicting ``prediction`` (v = alpha eps - sigma x0)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return alpha * eps - sigma * x0


def x0_from(prediction: str, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a network output of kind ``prediction`` into the estimate of clean data."""
    if prediction == "eps":
        return (x_t - sigma * out) / alpha
    if prediction == "x0":
        return out
    return alpha * x_t - sigma * out


class Denoiser:
    """``D(x_t, t, **cond) -> x0_hat`` around a network that predicts eps, x0 or v. Wrappers that
    change its input or output (a domain's per-window offset, guidance) sit around it."""

    def __init__(self, net: nn.Module | Callable, schedule: Schedule, prediction: str = "v"):
        self.net, self.schedule, self.prediction = net, schedule, check_prediction(prediction)

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        alpha, sigma = (append_dims(s, x_t.ndim) for s in self.schedule.alpha_sigma(t.to(x_t.dtype)))
        return x0_from(self.prediction, self.net(x_t, t, **cond), x_t, alpha, sigma)
