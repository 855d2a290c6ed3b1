"""Windows of a long series drawn one by one and stitched back: each window's own seed, and each
step taken from the window in which it lies most central."""

from __future__ import annotations

import hashlib

import numpy as np


def series_entropy(series: int | str | None) -> list[int]:
    """The seed words of a series: its name hashed (so a series draws the same noise wherever it
    sits among the frames of a call), or its number; no name (a frame of one series) is 0."""
    if series is None:
        return [0]
    if isinstance(series, (int, np.integer)):
        return [int(series)]
    digest = hashlib.sha256(str(series).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def window_seed(seed: int, sample: int, series: int | str | None, start: int) -> int:
    """The seed of one window of one sample: from (seed, sample, series name or number, start) only."""
    return int(np.random.SeedSequence([seed, sample, *series_entropy(series), start]).generate_state(1)[0])


def most_central(windows, series_index: int, length: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """For each step of a series: the window (index into ``windows``) in which it lies most central,
    and its offset there; the earliest window wins ties."""
    owner = np.full(length, -1)
    offset = np.zeros(length, dtype=np.int64)
    best = np.full(length, -1)
    for w in np.flatnonzero(windows.series_index == series_index):
        start, n = int(windows.start[w]), int(windows.length[w])
        j = np.arange(n)
        centrality = np.minimum(j, window - 1 - j)
        better = centrality > best[start : start + n]
        steps = start + j[better]
        owner[steps], offset[steps], best[steps] = w, j[better], centrality[better]
    return owner, offset
