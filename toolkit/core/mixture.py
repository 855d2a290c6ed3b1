"""Gaussian mixtures and their exact denoiser, the oracle that proves samplers right.

For data ``x0 ~ sum_k w_k N(mu_k, S_k)`` and ``x_t = alpha x0 + sigma eps``, given component k,
``x_t ~ N(alpha mu_k, alpha^2 S_k + sigma^2 I)`` and ``E[x0 | x_t, k] = mu_k + alpha S_k C_k^-1
(x_t - alpha mu_k)``; the posterior component weights follow from Bayes. All in float64 in each
component's eigenbasis, so the denoiser is exact to rounding, with no training involved.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from toolkit.core.schedule import Schedule


class GaussianMixture:
    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        if not torch.isclose(self.weights.sum(), torch.tensor(1.0, dtype=torch.float64)):
            raise ValueError("mixture weights must sum to 1")
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)  # [K, d], [K, d, d]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def random(cls, dim: int, components: int, seed: int = 0, spread: float = 2.0) -> GaussianMixture:
        """A reproducible mixture with well-separated means and random anisotropic covariances."""
        g = torch.Generator().manual_seed(seed)
        weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * spread / dim**0.25
        rot = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=torch.float64))[0]
        scales = torch.rand(components, dim, generator=g, dtype=torch.float64) * 0.3 + 0.05
        covs = rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)
        return cls(weights / weights.sum(), means, covs)

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def cov(self) -> Tensor:
        centred = self.means - self.mean()
        return torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum(
            "k,ki,kj->ij", self.weights, centred, centred
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws and their component indices."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        return self.means[comp] + torch.einsum("nij,nj->ni", chol[comp], z), comp

    def _log_joint(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, s = alpha[:, None, None], sigma[:, None, None]  # [n, 1, 1]
        var = a**2 * self.eigvals[None] + s**2  # [n, K, d]
        z = torch.einsum("kdj,nkd->nkj", self.eigvecs, x_t[:, None, :] - a * self.means[None])
        log_pdf = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return log_pdf + self.weights.log()[None], z, var

    def responsibilities(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Posterior probability of each component given x_t, [n, K]."""
        return torch.softmax(self._log_joint(x_t, alpha, sigma)[0], dim=-1)

    def classify(self, x: Tensor) -> Tensor:
        """Most probable component of clean points."""
        ones = torch.ones(x.shape[0], dtype=torch.float64)
        return self.responsibilities(x.to(torch.float64), ones, 0 * ones).argmax(-1)

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x_t] for per-sample scales alpha, sigma [n]."""
        log_joint, z, var = self._log_joint(x_t, alpha, sigma)
        resp = torch.softmax(log_joint, dim=-1)
        shrunk = alpha[:, None, None] * self.eigvals[None] * z / var
        cond_means = self.means[None] + torch.einsum("kdj,nkj->nkd", self.eigvecs, shrunk)
        return (resp[..., None] * cond_means).sum(1)

    def denoiser(self, schedule: Schedule):
        """``D(x_t, t) -> E[x0 | x_t]`` under ``schedule``, in x_t's dtype."""

        def denoise(x_t: Tensor, t: Tensor, **_) -> Tensor:
            alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
            return self.posterior_mean(x_t.to(torch.float64), alpha, sigma).to(x_t.dtype)

        return denoise


def frechet_distance(x: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Squared 2-Wasserstein distance between the Gaussian fit of samples ``x`` and N(mean, cov)."""
    x = x.to(torch.float64)
    mu, c = x.mean(0), torch.cov(x.T)
    vals, vecs = torch.linalg.eigh(cov)
    sqrt_cov = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(sqrt_cov @ c @ sqrt_cov).clamp_min(0).sqrt().sum()
    return float(((mu - mean) ** 2).sum() + torch.trace(c) + torch.trace(cov) - 2 * cross)
