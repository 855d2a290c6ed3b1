"""Modality-agnostic diffusion math on tensors of any rank [B, ...]."""

from toolkit.core import denoiser, loss, sampler, schedule, tune

__all__ = ["denoiser", "loss", "sampler", "schedule", "tune"]
