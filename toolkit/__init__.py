"""A multi-modal diffusion toolkit: one diffusion core, adapters for images, audio, point clouds
and time series."""

__version__ = "0.1.0"
