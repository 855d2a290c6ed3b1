"""The result of an imputation: samples of one input frame, and the filled frames made from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def quantile_suffix(q: float) -> str:
    """``0.05 -> "q05"``, ``0.5 -> "q50"``, ``0.025 -> "q02p5"``: the CSV column suffix of a quantile."""
    percent = round(q * 100, 6)
    if percent == int(percent):
        return f"q{int(percent):02d}"
    whole, fraction = f"{percent:09.6f}".rstrip("0").split(".")
    return f"q{int(whole):02d}p{fraction}"


def fill_column(column: pd.Series, values: np.ndarray) -> pd.Series:
    """``column`` with its missing entries replaced by ``values`` (float, one per row), cast to the
    column's dtype; integer columns get the values rounded. Observed entries are left as they are."""
    if not pd.api.types.is_numeric_dtype(column.dtype):
        column = column.astype(float)  # an all-missing object column (checked by prepare_frame)
    if pd.api.types.is_integer_dtype(column.dtype):
        values = np.rint(values)
    replacement = pd.Series(values, index=column.index).astype(column.dtype)
    return column.where(column.notna(), replacement)


@dataclass
class ImputationResult:
    """Samples of one input frame and the frames made from them.

    ``samples`` [n_samples, rows, features] in data units, rows in the input's order, features in
    the order of ``columns`` (the input's variable columns); observed cells hold the input values.
    """

    frame: pd.DataFrame = field(repr=False)
    columns: list
    samples: np.ndarray = field(repr=False)
    quantiles: tuple[float, ...] = ()
    filled: pd.DataFrame = field(init=False, repr=False)

    def __post_init__(self):
        self.filled = self._frame_from(np.median(self.samples, axis=0))

    def _frame_from(self, values: np.ndarray) -> pd.DataFrame:
        out = self.frame.copy()
        for k, column in enumerate(self.columns):
            if out[column].isna().any():
                out[column] = fill_column(self.frame[column], values[:, k])
        return out

    def quantile(self, q: float) -> pd.DataFrame:
        """The input with its gaps filled by the ``q`` quantile of the samples (any q in [0, 1])."""
        check_quantiles([q])
        return self._frame_from(np.quantile(self.samples, q, axis=0))

    def quantile_frames(self) -> dict[float, pd.DataFrame]:
        return {q: self.quantile(q) for q in self.quantiles}

    def with_quantile_columns(self) -> pd.DataFrame:
        """``filled`` plus a column ``<col>_q05`` (etc.) per variable and requested quantile; for
        observed cells the quantile columns repeat the observed value."""
        out = self.filled.copy()
        for q in self.quantiles:
            frame = self.quantile(q)
            for column in self.columns:
                name = f"{column}_{quantile_suffix(q)}"
                if name in out.columns:
                    raise ValueError(
                        f"cannot add quantile column {name!r}: the input already has a column of that name"
                    )
                out[name] = frame[column]
        return out


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(q) for q in quantiles)
    bad = [q for q in values if not 0.0 <= q <= 1.0]
    if bad:
        raise ValueError(f"quantiles must be in [0, 1], got {bad}")
    return values
