"""Embedded data sources: Mauna Loa CO2, US macro data and German interest and inflation (statsmodels),
and synthetic series with known truth."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MACRODATA_COLUMNS = (
    "realgdp",
    "realcons",
    "realinv",
    "realgovt",
    "realdpi",
    "cpi",
    "m1",
    "tbilrate",
    "unemp",
    "pop",
    "infl",
    "realint",
)

INTEREST_INFLATION_COLUMNS = ("Dp", "R")


def co2_frame() -> pd.DataFrame:
    """Weekly atmospheric CO2 at Mauna Loa, 1958-2001 (statsmodels), with its real gaps."""
    from statsmodels.datasets import co2

    return co2.load_pandas().data


def quarterly_frame(raw: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` of a statsmodels table with ``year`` and ``quarter`` columns, indexed by quarter start."""
    quarters = pd.PeriodIndex.from_fields(year=raw["year"].astype(int), quarter=raw["quarter"].astype(int), freq="Q")
    return raw[list(columns)].set_index(quarters.to_timestamp())


def macrodata_frame(columns: Sequence[str] = MACRODATA_COLUMNS) -> pd.DataFrame:
    """US quarterly macroeconomic series 1959-2009 (statsmodels), indexed by quarter start."""
    from statsmodels.datasets import macrodata

    return quarterly_frame(macrodata.load_pandas().data, columns)


def interest_inflation_frame(columns: Sequence[str] = INTEREST_INFLATION_COLUMNS) -> pd.DataFrame:
    """West German quarterly inflation (``Dp``, change of the log GDP deflator) and long-term interest rate
    (``R``), 1972 Q2 - 1998 Q4 (statsmodels' ``interest_inflation``, Luetkepohl's textbook data): 107
    quarters of two series that move together, indexed by quarter start."""
    from statsmodels.datasets import interest_inflation

    return quarterly_frame(interest_inflation.load_pandas().data, columns)


def synthetic_frames(
    num_series: int = 4,
    length: int = 400,
    num_features: int = 4,
    missing_rate: float = 0.1,
    seed: int = 0,
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Hourly series with known truth: two shared seasonal factors mixed per variable, a seasonality
    of each variable's own and AR(1) noise, at different offsets and scales; series lengths vary in
    [length/2, length]. Returns (observed with NaN gaps: random values plus one block per series, truth)."""
    rng = np.random.default_rng(seed)
    observed, truth = {}, {}
    columns = [f"x{k}" for k in range(num_features)]
    for s in range(num_series):
        n = length if s == 0 else int(rng.integers(length // 2, length + 1))
        t = np.arange(n)
        factors = np.stack([np.sin(2 * np.pi * t / rng.uniform(12, 60) + rng.uniform(0, 2 * np.pi)) for _ in range(2)])
        loadings = rng.normal(size=(num_features, 2))
        own = np.stack(
            [np.sin(2 * np.pi * t / rng.uniform(6, 48) + rng.uniform(0, 2 * np.pi)) for _ in range(num_features)]
        )
        noise = np.zeros((num_features, n))
        shocks = rng.normal(scale=0.1, size=(num_features, n))
        for i in range(1, n):
            noise[:, i] = 0.8 * noise[:, i - 1] + shocks[:, i]
        offset, scale = 10.0 * np.arange(num_features), 1.0 + np.arange(num_features)
        clean = offset[:, None] + scale[:, None] * (loadings @ factors + 0.5 * own + noise)
        gaps = rng.random((num_features, n)) < missing_rate
        gap_len = max(1, n // 20)
        gap_start = int(rng.integers(0, n - gap_len + 1))
        gaps[int(rng.integers(0, num_features)), gap_start : gap_start + gap_len] = True
        index = pd.date_range("2020-01-01", periods=n, freq="h")
        truth[f"s{s}"] = pd.DataFrame(clean.T, index=index, columns=columns)
        observed[f"s{s}"] = truth[f"s{s}"].mask(gaps.T)
    return observed, truth
