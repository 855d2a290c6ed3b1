"""Modality-agnostic diffusion math on tensors of any rank [B, ...]."""

from toolkit.core import denoiser, loss, sampler, schedule

__all__ = ["denoiser", "loss", "sampler", "schedule"]
