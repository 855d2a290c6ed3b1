"""Fixed-length windows cut from series, the per-variable normaliser, and model space."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from toolkit.domains.timeseries.reading import SeriesSet


@dataclass
class Windows:
    """Fixed-length windows cut from series: ``values`` [N, K, L] (NaN = missing or padding),
    ``time_pos`` [N, L] (0 at each window start), and where each came from: ``series_index`` [N],
    ``start`` [N] (first row) and ``length`` [N] (rows of real data; < L only when padded)."""

    values: np.ndarray
    time_pos: np.ndarray
    series_index: np.ndarray
    start: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts every ``stride`` steps, plus one so that the last window ends at the last step."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def make_windows(data: SeriesSet, window: int, stride: int) -> Windows:
    """Cut every series into windows; a series shorter than ``window`` is padded at the end with
    missing steps whose positions continue one unit apart."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    k = len(data.columns)
    values, time_pos, series_index, starts, lengths = [], [], [], [], []
    for i, s in enumerate(data.series):
        for start in window_starts(len(s), window, stride):
            n = min(window, len(s) - start)
            block = np.full((window, k), np.nan)
            block[:n] = s.values[start : start + n]
            pos = np.empty(window)
            pos[:n] = s.positions[start : start + n] - s.positions[start]
            pos[n:] = pos[n - 1] + np.arange(1, window - n + 1)
            values.append(block.T)
            time_pos.append(pos)
            series_index.append(i)
            starts.append(start)
            lengths.append(n)
    if not values:
        return Windows(np.zeros((0, k, window)), np.zeros((0, window)), *(np.zeros(0, dtype=int),) * 3)
    return Windows(np.stack(values), np.stack(time_pos), np.array(series_index), np.array(starts), np.array(lengths))


@dataclass
class Normalizer:
    """Per-variable ``(value - mean) / std``; std 0 (a constant or single observed value) -> 1."""

    columns: list[str]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, data: SeriesSet, window: int | None = None) -> Normalizer:
        """Mean of the observed values of each variable and their spread: the population std, or,
        with ``window``, the root-mean-square deviation from each window's own mean (windows half a
        window apart): the scale of what the network sees once windows are centred on their mean
        (``window_offset``), so that a slowly trending series still fills the unit range."""
        stacked = np.concatenate([s.values for s in data.series], axis=0)
        observed = ~np.isnan(stacked)
        empty = [c for c, n in zip(data.columns, observed.sum(axis=0), strict=True) if n == 0]
        if empty:
            raise ValueError(f"cannot normalise columns {empty}: they have no observed training value")
        mean = np.nanmean(stacked, axis=0)
        if window is None:
            std = np.nanstd(stacked, axis=0)
        else:
            values = make_windows(data, window, max(1, window // 2)).values  # [N, K, L]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # windows where a variable is all missing
                centred = values - np.nanmean(values, axis=-1, keepdims=True)
                std = np.sqrt(np.nanmean(centred**2, axis=(0, 2)))
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        return cls(list(data.columns), mean, std)

    def normalize(self, values: np.ndarray, feature_axis: int = -1) -> np.ndarray:
        shape = self._shape(values.ndim, feature_axis)
        return (values - self.mean.reshape(shape)) / self.std.reshape(shape)

    def denormalize(self, x: np.ndarray | Tensor, feature_axis: int = -1) -> np.ndarray:
        x = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=float)
        shape = self._shape(x.ndim, feature_axis)
        return x * self.std.reshape(shape) + self.mean.reshape(shape)

    def _shape(self, ndim: int, feature_axis: int) -> list[int]:
        shape = [1] * ndim
        shape[feature_axis] = len(self.columns)
        return shape

    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Normalizer:
        mean, std = np.asarray(d["mean"], dtype=float), np.asarray(d["std"], dtype=float)
        columns = [str(c) for c in d["columns"]]
        if not len(columns) == len(mean) == len(std):
            raise ValueError("normalizer dict: columns, mean and std must have the same length")
        return cls(columns, mean, std)


def to_model_space(values: np.ndarray, normalizer: Normalizer) -> tuple[Tensor, Tensor]:
    """Windows [N, K, L] with NaN -> (normalised x with 0 where missing, ``observed`` as 0/1 floats)."""
    observed = ~np.isnan(values)
    x = np.where(observed, normalizer.normalize(values, feature_axis=-2), 0.0)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(observed, dtype=torch.float32)


def window_offset(x: Tensor, given: Tensor) -> Tensor:
    """Mean of the given values of each window and variable, ``[B, K, 1]`` (0 where none is given)."""
    count = given.sum(dim=-1, keepdim=True)
    return (x * given).sum(dim=-1, keepdim=True) / count.clamp(min=1)
