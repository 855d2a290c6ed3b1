"""Drawing helpers shared by every domain: float pictures in [0, 1] -> PNG files.

Pictures are numpy arrays ``[H, W]`` (grey) or ``[H, W, C]`` with C in 1, 3, 4. Small pictures
(16x16 digits) can be enlarged with ``scale`` (nearest neighbour, so pixels stay sharp).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def to_uint8(array) -> np.ndarray:
    """Floats in [0, 1] (values outside are clipped) -> uint8 in [0, 255]."""
    array = np.asarray(array, dtype=np.float32)
    return np.round(np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0).astype(np.uint8)


def as_hwc(array) -> np.ndarray:
    """A picture as float32 ``[H, W, C]`` (a grey ``[H, W]`` picture gets C = 1)."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in PIL_MODES:
        raise ValueError(f"expected a picture [H, W] or [H, W, C] with C in 1, 3, 4; got shape {array.shape}")
    return array


def as_nhwc(images) -> np.ndarray:
    """Pictures as float32 ``[n, H, W, C]`` (grey ``[n, H, W]`` pictures get C = 1)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in PIL_MODES:
        raise ValueError(f"expected pictures [n, H, W] or [n, H, W, C] with C in 1, 3, 4; got {images.shape}")
    return images


def upscale(array, scale: int) -> np.ndarray:
    """Enlarge a picture ``[H, W, ...]`` by an integer factor, nearest neighbour."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    array = np.asarray(array)
    if scale == 1:
        return array
    return array.repeat(int(scale), axis=0).repeat(int(scale), axis=1)


def upscale_each(images, scale: int) -> np.ndarray:
    """Enlarge every picture of ``[n, H, W, C]`` by an integer factor."""
    return np.moveaxis(upscale(np.moveaxis(as_nhwc(images), 0, 2), scale), 2, 0)


def display_scale(size: int, target: int = 64) -> int:
    """The integer enlargement that makes a ``size``-pixel picture about ``target`` pixels wide."""
    return max(1, target // max(1, size))


def save_png(array, path: str | Path, scale: int = 1) -> Path:
    """Write one picture (floats in [0, 1]) as a PNG, creating the parent folder."""
    picture = upscale(to_uint8(as_hwc(array)), scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = picture.shape[2]
    Image.fromarray(picture[:, :, 0] if channels == 1 else picture, mode=PIL_MODES[channels]).save(path)
    return path


def make_grid(images, ncol: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile pictures ``[n, H, W, C]`` row by row into one ``[H', W', C]`` picture.

    ``ncol`` defaults to a near-square layout; ``pad`` pixels of ``pad_value`` separate the tiles.
    """
    images = as_nhwc(images)
    n, height, width, channels = images.shape
    if n == 0:
        raise ValueError("make_grid needs at least one picture")
    ncol = min(n, ncol or math.ceil(math.sqrt(n)))
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (height + pad) + pad, ncol * (width + pad) + pad, channels), pad_value, dtype=np.float32)
    for index, image in enumerate(images):
        row, col = divmod(index, ncol)
        top, left = pad + row * (height + pad), pad + col * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid


def rows_by_label(images, labels) -> tuple[np.ndarray, int]:
    """Arrange pictures one row per distinct label (sorted), blanks filling short rows.

    Returns the pictures in grid order and the number of columns, for ``make_grid``.
    """
    images, labels = as_nhwc(images), np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} pictures but {len(labels)} labels")
    groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    ncol = max(len(group) for group in groups)
    arranged = np.zeros((len(groups) * ncol, *images.shape[1:]), dtype=np.float32)
    for row, group in enumerate(groups):
        arranged[row * ncol : row * ncol + len(group)] = images[group]
    return arranged, ncol


def save_grid(images, path: str | Path, ncol: int | None = None, pad: int = 1, scale: int = 1) -> Path:
    """Write pictures ``[n, H, W, C]`` as one tiled PNG (see ``make_grid``)."""
    return save_png(make_grid(upscale_each(images, scale), ncol=ncol, pad=pad), path)


def save_strip(frames, path: str | Path, pad: int = 1, scale: int = 1) -> Path:
    """Write a progression left to right: frames ``[k, H, W, C]`` as one row, or
    ``[rows, k, H, W, C]`` as one row per sample (e.g. noise -> result for several samples)."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 5:
        rows, k = frames.shape[:2]
        return save_grid(frames.reshape(rows * k, *frames.shape[2:]), path, ncol=k, pad=pad, scale=scale)
    return save_grid(frames, path, ncol=len(frames), pad=pad, scale=scale)
