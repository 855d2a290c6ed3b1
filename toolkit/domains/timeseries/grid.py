"""The regular time grid that a series' time stamps lie on (dates of any unit or time zone, or
numbers): its step, the stamps missing from it, and the stamps that continue it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_GRID_RATIO = 10  # a time grid may be at most this many times longer than the stamps given on it


@dataclass
class TimeGrid:
    """The regular grid that sorted, distinct time stamps lie on: ``step`` (a pandas offset for dates,
    a number otherwise; None for a single stamp), ``stamps`` the whole grid from the first to the last
    given stamp, and ``slots`` [T], the grid position of each given stamp."""

    step: object
    stamps: pd.Index
    slots: np.ndarray

    @property
    def missing(self) -> int:
        """How many grid stamps between the first and the last given one are absent."""
        return len(self.stamps) - len(self.slots)

    def future(self, horizon: int, where: str = "the series") -> pd.Index:
        """The ``horizon`` grid stamps after the last one."""
        if self.step is None:
            raise ValueError(
                f"{where}: cannot tell the time step from a single time stamp; give at least two rows of history"
            )
        last = self.stamps[-1]
        if isinstance(self.stamps, pd.DatetimeIndex):
            return pd.date_range(last, periods=horizon + 1, freq=self.step, unit=self.stamps.unit)[1:]
        future = last + self.step * np.arange(1, horizon + 1)
        return pd.Index(future.astype(self.stamps.dtype) if self.stamps.dtype.kind in "iu" else future)


def _irregular(where: str, detail: str) -> ValueError:
    return ValueError(
        f"{where}: the time stamps are not on one regular grid ({detail}); the model works in whole steps "
        "of one frequency. Resample to the step you want first, e.g. frame.resample('1D').mean() on a DatetimeIndex "
        "(frame.set_index('date').resample('1D').mean() for a time column), then impute the gaps"
    )


def _infer_freq(index: pd.DatetimeIndex):
    """``pd.infer_freq`` as an offset, or None (pandas 3 warns about offset aliases; both work here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        freq = pd.infer_freq(index) if len(index) >= 3 else None
    return pd.tseries.frequencies.to_offset(freq) if freq is not None else None


def _datetime_grid(index: pd.DatetimeIndex, where: str) -> TimeGrid:
    """The frequency of the whole index, else the coarsest grid that holds every stamp among the
    frequencies pandas infers for consecutive triples (calendar steps such as months or business
    days) and the greatest common divisor of the steps (in the index's own unit)."""
    freq = _infer_freq(index)
    if freq is not None:
        return TimeGrid(freq, index, np.arange(len(index)))
    starts = np.unique(np.linspace(0, len(index) - 3, num=max(0, min(64, len(index) - 2))).astype(int))
    names = {f.freqstr for f in (_infer_freq(index[i : i + 3]) for i in starts) if f is not None}
    steps = index[1:] - index[:-1]
    divisor = pd.Timedelta(int(np.gcd.reduce(steps.asi8)), unit=steps.unit)  # asi8 counts steps.unit
    best, sparse = None, None
    for step in map(pd.tseries.frequencies.to_offset, [*sorted(names), divisor]):
        if isinstance(step, pd.offsets.Tick):  # a fixed step: check it without building a huge grid
            if ((index - index[0]) % pd.Timedelta(step)).any():
                continue
            size = (index[-1] - index[0]) // pd.Timedelta(step) + 1
            if size > MAX_GRID_RATIO * len(index):
                sparse = sparse or (size, step)
                continue
        grid = pd.date_range(index[0], index[-1], freq=step, unit=index.unit)
        slots = grid.get_indexer(index)
        if (slots >= 0).all() and (best is None or len(grid) < len(best.stamps)):
            best = TimeGrid(step, grid, slots)
    # The steps' common divisor holds every stamp, so without a grid its grid was too long: an error.
    size, step = (len(best.stamps), best.step) if best is not None else sparse
    _check_density(len(index), size, step_name(step), where)
    return best


def _check_density(given: int, size: int, step, where: str) -> None:
    if size > MAX_GRID_RATIO * given:
        detail = f"only {given} of the {size} steps of {step} from the first to the last stamp have a row"
        raise _irregular(where, detail)


def _numeric_grid(index: pd.Index, where: str) -> TimeGrid:
    """Numeric stamps: the largest step of which every step is a whole multiple, among the smallest
    step divided by 1, 2, ... ``MAX_GRID_RATIO``."""
    values = index.to_numpy(dtype=float)
    steps = np.diff(values)
    for divisor in range(1, MAX_GRID_RATIO + 1):
        step = steps.min() / divisor
        multiples = np.rint(steps / step)
        if np.allclose(steps, multiples * step, rtol=1e-6, atol=0):
            break
    else:
        odd = steps[~np.isclose(steps, np.rint(steps / steps.min()) * steps.min(), rtol=1e-6, atol=0)][:3]
        raise _irregular(where, f"steps of {odd.tolist()} share no common step with the smallest, {steps.min():g}")
    slots = np.concatenate([[0], np.cumsum(multiples)]).astype(np.int64)
    _check_density(len(index), int(slots[-1]) + 1, step_name(step), where)
    stamps = values[0] + step * np.arange(slots[-1] + 1)
    stamps[slots] = values
    if index.dtype.kind in "iu" and step == int(step):
        return TimeGrid(int(step), pd.Index(stamps.astype(index.dtype), name=index.name), slots)
    return TimeGrid(float(step), pd.Index(stamps, name=index.name), slots)


def time_grid(index: pd.Index, where: str = "the series") -> TimeGrid:
    """The regular grid of sorted, distinct time stamps (dates of any resolution or time zone, or
    numbers). Grid stamps may be missing while the grid is at most ``MAX_GRID_RATIO`` times longer
    than the stamps given; stamps that are not whole steps of one frequency are a ValueError that
    says how to resample."""
    if isinstance(index, pd.PeriodIndex):
        index = index.to_timestamp()
    if len(index) < 2:
        return TimeGrid(None, index, np.arange(len(index)))
    if isinstance(index, pd.DatetimeIndex):
        return _datetime_grid(index, where)
    if pd.api.types.is_numeric_dtype(index.dtype) and not pd.api.types.is_bool_dtype(index.dtype):
        return _numeric_grid(index, where)
    raise ValueError(
        f"{where}: cannot use time stamps of type {index.dtype}; use a DatetimeIndex, a PeriodIndex, "
        "a numeric index or a time_column of dates or numbers"
    )


def step_name(step) -> str:
    return step.freqstr if isinstance(step, pd.offsets.BaseOffset) else f"{step:g}"
