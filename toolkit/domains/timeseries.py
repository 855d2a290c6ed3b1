"""Multivariate time series with gaps: reading, windows, normalisation, training masks, the domain.

Model space: a window of ``L`` steps of ``K`` variables is ``x`` ``[K, L]``, each variable
normalised by the mean and standard deviation of its observed training values, missing values set
to 0, with ``mask`` ``[K, L]`` (1 = observed). ``time_pos`` ``[L]`` gives each step's position in
steps of the series' time grid, 0 at the window start.

Input handling (``read_series``), decided once here and relied on by the Imputer:

- Sources: a CSV or Parquet file, a folder of them (one series per file), a DataFrame, a list or a
  dict of DataFrames (one series each), optionally split further by a series-id column.
- Time: ``time_column`` (datetime-like, ISO 8601 text, or numeric), else a DatetimeIndex/PeriodIndex,
  else the row order. Missing or unparseable time stamps and duplicate time stamps within a series
  are errors. Unsorted time stamps are sorted (each row keeps its time stamp, so nothing is lost).
- Time grid (``time_grid``): the model works in whole steps of one frequency. Stamps missing from a
  series' regular grid are inserted as all-missing steps, with a warning naming how many; stamps
  that are not whole steps of one frequency (or a grid over ``MAX_GRID_RATIO`` times longer than
  the stamps) are errors that say how to resample. Dates of any unit or time zone use pandas' date
  arithmetic and frequencies; ``positions`` are the grid steps 0, 1, 2...
- Variables: ``columns``, else every column but the time and series-id columns. Non-numeric
  columns, infinite values or values beyond float32's range (named by column and row) and an empty
  frame (no rows or no variables) are errors; NaN marks a missing value. A CSV file read as a
  single column whose name holds ';', a tab or '|' is an error naming that separator. A variable
  with no observed value anywhere is an error (nothing to learn from) unless ``allow_all_missing``
  (the Imputer's inputs: the trained model fills it in).
- Constant variables (or a single observed value) get scale 1: they normalise to 0, never inf.
- A series shorter than the window is padded at the end with missing steps (mask 0), so it still
  gives one window; padded steps are never conditioned on nor counted in the loss.

Train/validation split: per series, the last ``val_fraction`` of its steps (at least one, when
the series has two or more steps) is validation, the rest training; the normaliser sees training
values only. Windows of length ``window`` start every ``stride`` steps, plus one ending at the last
step so that every step is covered.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import matplotlib
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from toolkit.domains.base import GRID_FILE, SAMPLES_FILE, STRIP_FILE, Domain, TrainingBatch
from toolkit.domains.data import ResumableLoader

SOURCES = ("co2", "macrodata", "synthetic", "path")
MASK_STRATEGIES = ("random", "historical", "block")
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
FILE_SUFFIXES = (".csv", ".parquet", ".pq")
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_GRID_RATIO = 10  # a time grid may be at most this many times longer than the stamps given on it


# ----------------------------------------------------------------------------- reading


@dataclass
class Series:
    """One multivariate series: ``values`` [T, K] (NaN = missing) at time stamps ``index`` (a regular
    grid), and ``positions`` [T], the time in grid steps (0 at its first step)."""

    name: str
    index: pd.Index
    positions: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def slice(self, start: int, stop: int) -> Series:
        return Series(self.name, self.index[start:stop], self.positions[start:stop], self.values[start:stop])


@dataclass
class SeriesSet:
    """Several series over the same variables ``columns``."""

    columns: list[str]
    series: list[Series]

    def observed_counts(self) -> np.ndarray:
        return sum((~np.isnan(s.values)).sum(axis=0) for s in self.series)


def read_frame(path: str | Path) -> pd.DataFrame:
    """A CSV (comma-separated, decimal point) or Parquet file as a DataFrame; unreadable files and
    CSV files with another separator are ValueErrors naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass a .csv or .parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"time-series file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"cannot read {path}: expected a .csv or .parquet file, got {suffix or 'no suffix'!r}")
    csv = suffix == ".csv"
    try:
        frame = pd.read_csv(path) if csv else pd.read_parquet(path)
    except (ValueError, OSError) as error:  # pandas' parser errors and pyarrow's are ValueErrors
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise ValueError(f"cannot read {path} as {'CSV' if csv else 'Parquet'}: {first_line}") from None
    return check_separator(frame, str(path)) if csv else frame


def check_separator(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """``frame`` as read with commas; a single column whose name holds ';', a tab or '|' means the
    file uses that separator (often with decimal commas): a ValueError that names it and the fix."""
    if len(frame.columns) == 1:
        header = str(frame.columns[0])
        for separator, name in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
            if separator in header:
                decimal = ", decimal=','" if separator == ";" else ""
                raise ValueError(
                    f"{source} looks {name}-separated (header {header[:60]!r}), but commas are expected: "
                    f"convert it first, e.g. pd.read_csv(path, sep={separator!r}{decimal}).to_csv('fixed.csv', "
                    "index=False)"
                )
    return frame


def _frames_from(data) -> dict[str, pd.DataFrame]:
    """Named frames from a path (file or folder), a DataFrame, or a list or dict of DataFrames or paths."""
    if isinstance(data, pd.DataFrame):
        return {"series": data}
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"folder {path} holds no .csv or .parquet files")
            return {p.stem: read_frame(p) for p in files}
        return {path.stem: read_frame(path)}
    if isinstance(data, Mapping):
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, Sequence):
        items = [(Path(v).stem if isinstance(v, (str, Path)) else str(i), v) for i, v in enumerate(data)]
    else:
        raise TypeError(f"cannot read time series from {type(data).__name__}; pass a path, a DataFrame or a dict")
    if not items:
        raise ValueError("no time series given: the collection of frames is empty")
    frames = {}
    for name, item in items:
        if isinstance(item, (str, Path)):
            item = read_frame(item)
        if not isinstance(item, pd.DataFrame):
            raise TypeError(f"series {name!r} is a {type(item).__name__}; expected a DataFrame or a file path")
        frames[name] = item
    return frames


def parse_times(values: pd.Series) -> pd.Series:
    """Text time stamps as datetimes: pandas' inferred format, else ISO 8601 in any of its forms
    (pandas infers one format from the first stamp, so '2021-01-02' then '2021-01-02 07:00' fails)."""
    try:
        return pd.to_datetime(values)
    except ValueError:
        return pd.to_datetime(values, format="ISO8601")


def _time_index(frame: pd.DataFrame, time_column: str | None, where: str) -> tuple[pd.DataFrame, pd.Index]:
    """The frame without its time column, and the time stamps of its rows."""
    if time_column is not None:
        if time_column not in frame.columns and time_column in (frame.index.names or []):
            frame = frame.reset_index()
        if time_column not in frame.columns:
            raise ValueError(
                f"{where}: time column {time_column!r} not found; columns are {list(map(str, frame.columns))}"
            )
        raw = frame[time_column]
        frame = frame.drop(columns=[time_column])
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            index = pd.Index(raw.to_numpy(dtype=float), name=time_column)
        else:
            try:
                index = pd.DatetimeIndex(parse_times(raw), name=time_column)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"{where}: time column {time_column!r} holds values that are neither numbers nor dates "
                    f"({str(err).splitlines()[0]}); write them as ISO 8601 dates such as 2021-01-31 or "
                    "2021-01-31 14:00, or choose another time_column"
                ) from None
        if index.isna().any():
            row = int(np.flatnonzero(index.isna())[0])
            raise ValueError(f"{where}: time column {time_column!r} is missing a time stamp at row {row}")
        return frame, index
    if isinstance(frame.index, pd.PeriodIndex):
        return frame, frame.index.to_timestamp()
    if isinstance(frame.index, pd.DatetimeIndex):
        if frame.index.isna().any():
            raise ValueError(f"{where}: the DatetimeIndex has missing time stamps (NaT)")
        return frame, frame.index
    return frame, pd.RangeIndex(len(frame))


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
    _check_density(len(index), size, _step_name(step), where)
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
    _check_density(len(index), int(slots[-1]) + 1, _step_name(step), where)
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


def _numeric_values(frame: pd.DataFrame, columns: list[str], where: str) -> np.ndarray:
    """The variable columns as float [T, K]. Numbers held as objects or text ("1.5") are accepted;
    other text, dates and infinities are errors that say what to do."""
    numeric, bad = {}, {}
    for c in columns:
        col = frame[c]
        if pd.api.types.is_numeric_dtype(col):
            numeric[c] = col.astype(float)
            continue
        if pd.api.types.is_datetime64_any_dtype(col):
            bad[c] = col.dropna().iloc[0] if col.notna().any() else "dates"
            continue
        parsed = pd.to_numeric(col, errors="coerce")
        offending = col[parsed.isna() & col.notna()]
        if len(offending):
            bad[c] = offending.iloc[0]
        else:
            numeric[c] = parsed.astype(float)
    if bad:
        raise ValueError(
            f"{where}: columns {list(bad)} are not numeric (e.g. {bad}); drop them with columns=[...], "
            "mark missing values as empty/NaN, or set time_column/series_column if they hold times or ids"
        )
    values = np.column_stack([numeric[c].to_numpy(dtype=float, na_value=np.nan) for c in columns])
    out_of_range = np.abs(values) > FLOAT32_MAX  # NaN compares False: it marks a missing value
    if out_of_range.any():
        row, k = (int(i[0]) for i in np.nonzero(out_of_range))
        raise ValueError(
            f"{where}: column {columns[k]!r} holds {values[row, k]:g} at row {frame.index[row]!r}, which is infinite "
            f"or too large for the model (it computes in float32, up to +-{FLOAT32_MAX:.1e}); mark missing values "
            "as empty/NaN and check the column's units"
        )
    return values


def _series_of(frame: pd.DataFrame, name: str, columns: list[str], index: pd.Index) -> Series:
    where = f"series {name!r}"
    values = _numeric_values(frame, columns, where)
    if index.has_duplicates:
        dup = index[index.duplicated()][:3].tolist()
        raise ValueError(f"{where}: duplicate time stamps {dup}; aggregate or drop duplicate rows first")
    if not index.is_monotonic_increasing:
        order = np.argsort(index.to_numpy(), kind="stable")
        index, values = index[order], values[order]
    grid = time_grid(index, where)
    if grid.missing:
        warnings.warn(
            f"{where}: {grid.missing} time stamps are missing from its regular grid (step {_step_name(grid.step)}); "
            "they are imputed as gaps of every variable",
            UserWarning,
            stacklevel=3,
        )
        full = np.full((len(grid.stamps), values.shape[1]), np.nan)
        full[grid.slots] = values
        index, values = grid.stamps, full
    return Series(name, index, np.arange(len(index), dtype=float), values)


def _step_name(step) -> str:
    return step.freqstr if isinstance(step, pd.offsets.BaseOffset) else f"{step:g}"


def read_series(
    data,
    *,
    time_column: str | None = None,
    series_column: str | None = None,
    columns: Sequence[str] | None = None,
    allow_all_missing: bool = False,
) -> SeriesSet:
    """Read and validate time series (see the module docstring for every rule)."""
    frames = _frames_from(data)
    chosen = [str(c) for c in columns] if columns is not None else None
    series: list[Series] = []
    result_columns: list[str] = []
    for frame_name, frame in frames.items():
        where = f"series {frame_name!r}"
        if frame.columns.has_duplicates:
            raise ValueError(f"{where}: duplicate column names {frame.columns[frame.columns.duplicated()].tolist()}")
        frame = frame.rename(columns=str)
        if len(frame) == 0:
            raise ValueError(f"{where}: the frame is empty (no rows)")
        frame, index = _time_index(frame, time_column, where)
        groups: list[tuple[str, pd.DataFrame, pd.Index]]
        if series_column is not None:
            if series_column not in frame.columns:
                raise ValueError(
                    f"{where}: series column {series_column!r} not found; columns are {list(frame.columns)}"
                )
            ids = frame[series_column]
            if ids.isna().any():
                raise ValueError(f"{where}: series column {series_column!r} has missing ids")
            frame = frame.drop(columns=[series_column])
            prefix = "" if len(frames) == 1 else f"{frame_name}/"
            rows_of = frame.groupby(ids.to_numpy(), sort=False).indices
            groups = [(f"{prefix}{sid}", frame.iloc[rows], index[rows]) for sid, rows in rows_of.items()]
        else:
            groups = [(frame_name, frame, index)]
        variables = chosen if chosen is not None else list(frame.columns)
        if not variables:
            raise ValueError(f"{where}: no variable columns left after the time and series-id columns")
        missing = [c for c in variables if c not in frame.columns]
        if missing:
            raise ValueError(f"{where}: columns {missing} not found; columns are {list(frame.columns)}")
        if chosen is None and series and variables != result_columns:
            raise ValueError(
                f"{where}: its columns {variables} differ from the first series' {result_columns}; "
                "give every series the same variables or choose them with columns=[...]"
            )
        result_columns = variables
        series.extend(_series_of(part, name, variables, idx) for name, part, idx in groups)
    data_set = SeriesSet(result_columns, series)
    if not allow_all_missing:
        empty = [c for c, n in zip(data_set.columns, data_set.observed_counts(), strict=True) if n == 0]
        if empty:
            raise ValueError(f"columns {empty} have no observed value at all; drop them with columns=[...]")
    return data_set


def split_by_time(data: SeriesSet, val_fraction: float) -> tuple[SeriesSet, SeriesSet]:
    """Per series, the last ``val_fraction`` of the steps for validation, the rest for training."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val = [], []
    for s in data.series:
        n_val = int(round(len(s) * val_fraction))
        if val_fraction > 0 and len(s) >= 2:
            n_val = min(max(n_val, 1), len(s) - 1)
        cut = len(s) - n_val
        train.append(s.slice(0, cut))
        if n_val:
            val.append(s.slice(cut, len(s)))
    return SeriesSet(data.columns, train), SeriesSet(data.columns, val)


# ----------------------------------------------------------------------------- windows


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


# ----------------------------------------------------------------------------- normalisation


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
    """Windows [N, K, L] with NaN -> (normalised x with 0 where missing, mask 1 = observed)."""
    observed = ~np.isnan(values)
    x = np.where(observed, normalizer.normalize(values, feature_axis=-2), 0.0)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(observed, dtype=torch.float32)


def window_offset(x: Tensor, cond_mask: Tensor) -> Tensor:
    """Mean of the given values of each window and variable, ``[B, K, 1]`` (0 where none is given)."""
    count = cond_mask.sum(dim=-1, keepdim=True)
    return (x * cond_mask).sum(dim=-1, keepdim=True) / count.clamp(min=1)


# ----------------------------------------------------------------------------- training masks


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """Uniform draws from ``generator`` (on its own device), moved to ``device``."""
    source = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=source).to(device)


def random_hidden(observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """CSDI's random strategy: per sample a fraction r ~ U(0, 1); each observed value is hidden
    with probability r."""
    b = observed.shape[0]
    fraction = _uniform((b,), generator, observed.device).reshape(b, *([1] * (observed.ndim - 1)))
    return observed & (_uniform(tuple(observed.shape), generator, observed.device) < fraction)


def historical_hidden(observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Hide what another sample of the batch is missing (its missing pattern, CSDI's 'historical')."""
    b = observed.shape[0]
    if b < 2:
        return torch.zeros_like(observed)
    order = torch.argsort(_uniform((b,), generator, "cpu"))
    other = torch.empty(b, dtype=torch.long)
    other[order] = order.roll(1)
    return observed & ~observed[other.to(observed.device)]


def block_hidden(
    observed: Tensor,
    generator: torch.Generator | None = None,
    block_length: tuple[int, int] = (4, 16),
    all_features_prob: float = 0.5,
) -> Tensor:
    """Hide one contiguous block of steps: with probability ``all_features_prob`` the same block in
    every variable, otherwise a block of its own in each variable."""
    b, k, steps = observed.shape
    low, high = max(1, min(block_length[0], steps)), max(1, min(block_length[1], steps))
    u_len, u_start, u_all = (_uniform(shape, generator, observed.device) for shape in ((b, k), (b, k), (b, 1)))
    length = (low + (u_len * (high - low + 1)).floor().clamp(max=high - low)).long()
    start = (u_start * (steps - length + 1)).floor().long()
    same = u_all < all_features_prob
    length = torch.where(same, length[:, :1], length)
    start = torch.where(same, start[:, :1], start)
    pos = torch.arange(steps, device=observed.device)
    return observed & (pos >= start[..., None]) & (pos < (start + length)[..., None])


def _at_least_one(observed: Tensor, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
    """Samples with observed values but nothing hidden get one random observed value hidden."""
    b = observed.shape[0]
    empty = (hidden.reshape(b, -1).sum(1) == 0) & (observed.reshape(b, -1).sum(1) > 0)
    if not empty.any():
        return hidden
    score = torch.where(observed, _uniform(tuple(observed.shape), generator, observed.device), -1.0)
    pick = score.reshape(b, -1).argmax(1)
    extra = torch.zeros(b, observed[0].numel(), dtype=torch.bool, device=observed.device)
    extra[torch.arange(b, device=observed.device), pick] = True
    return hidden | (extra.reshape(observed.shape) & empty.reshape(b, *([1] * (observed.ndim - 1))))


class TrainingMasker:
    """Chooses what observed values to hide in training: per sample one strategy drawn with the
    given probabilities; a sample left with nothing hidden (historical pattern with no gaps, a
    block over missing steps) falls back to the random strategy, then to one hidden value."""

    def __init__(self, strategies: Mapping[str, float] | str, block_length: Sequence[int] = (4, 16)):
        probs = {strategies: 1.0} if isinstance(strategies, str) else {str(k): float(v) for k, v in strategies.items()}
        unknown = sorted(set(probs) - set(MASK_STRATEGIES))
        if unknown:
            raise ValueError(f"unknown training mask strategies {unknown}; choose from {MASK_STRATEGIES}")
        if any(p < 0 for p in probs.values()) or sum(probs.values()) <= 0:
            raise ValueError(f"training mask probabilities must be >= 0 with a positive sum, got {probs}")
        if len(block_length) != 2 or not 1 <= block_length[0] <= block_length[1]:
            raise ValueError(f"block_length must be [min, max] with 1 <= min <= max, got {list(block_length)}")
        total = sum(probs.values())
        self.names = [n for n in MASK_STRATEGIES if probs.get(n, 0) > 0]
        self.cumulative = torch.tensor(np.cumsum([probs[n] / total for n in self.names]), dtype=torch.float32)
        self.block_length = (int(block_length[0]), int(block_length[1]))

    def __call__(self, observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Boolean ``hidden`` [B, K, L], a subset of ``observed``."""
        observed = observed.bool()
        b = observed.shape[0]
        choice = torch.searchsorted(self.cumulative, _uniform((b,), generator, "cpu")).clamp(max=len(self.names) - 1)
        shape = (b, *([1] * (observed.ndim - 1)))
        hidden = torch.zeros_like(observed)
        for i, name in enumerate(self.names):
            picked = (choice == i).to(observed.device).reshape(shape)
            if not picked.any():
                continue
            if name == "random":
                candidate = random_hidden(observed, generator)
            elif name == "historical":
                candidate = historical_hidden(observed, generator)
            else:
                candidate = block_hidden(observed, generator, self.block_length)
            hidden = torch.where(picked, candidate, hidden)
        nothing = (hidden.reshape(b, -1).sum(1) == 0).reshape(shape)
        hidden = torch.where(nothing, random_hidden(observed, generator), hidden)
        return _at_least_one(observed, hidden, generator)


# ----------------------------------------------------------------------------- embedded data


def co2_frame() -> pd.DataFrame:
    """Weekly atmospheric CO2 at Mauna Loa, 1958-2001 (statsmodels), with its real gaps."""
    from statsmodels.datasets import co2

    return co2.load_pandas().data


def macrodata_frame(columns: Sequence[str] = MACRODATA_COLUMNS) -> pd.DataFrame:
    """US quarterly macroeconomic series 1959-2009 (statsmodels), indexed by quarter start."""
    from statsmodels.datasets import macrodata

    raw = macrodata.load_pandas().data
    quarters = pd.PeriodIndex.from_fields(year=raw["year"].astype(int), quarter=raw["quarter"].astype(int), freq="Q")
    return raw[list(columns)].set_index(quarters.to_timestamp())


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


# ----------------------------------------------------------------------------- data module


class WindowDataset(Dataset):
    """Model-space windows as dicts: ``x`` [K, L], ``mask`` [K, L], ``time_pos`` [L]."""

    def __init__(self, windows: Windows, normalizer: Normalizer):
        self.x, self.mask = to_model_space(windows.values, normalizer)
        self.time_pos = torch.as_tensor(windows.time_pos, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "mask": self.mask[i], "time_pos": self.time_pos[i]}


class WindowDataModule(L.LightningDataModule):
    def __init__(self, train: WindowDataset, val: WindowDataset, batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(
            self.train,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


# ----------------------------------------------------------------------------- the domain


class TimeSeriesDomain(Domain):
    """Imputation of multivariate series: windows [K, L], CSDI-style conditional denoiser trained
    to recover hidden observed values from the others (see the module docstring for data rules)."""

    name = "timeseries"
    num_classes = 0

    def __init__(
        self,
        net: Mapping,
        source: str = "co2",
        path: str | list[str] | None = None,
        time_column: str | None = None,
        series_column: str | None = None,
        columns: list[str] | None = None,
        window: int = 64,
        stride: int = 8,
        val_fraction: float = 0.2,
        training_mask: Mapping[str, float] | str = "random",
        block_length: Sequence[int] = (4, 16),
        synthetic: Mapping | None = None,
        normalizer: Mapping | None = None,
    ):
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
        if source == "path" and not path:
            raise ValueError("source 'path' needs path: a CSV/Parquet file, a folder of them, or a list of files")
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
        self.net_cfg = net
        self.source, self.path = source, path
        self.read_options = {"time_column": time_column, "series_column": series_column, "columns": columns}
        self.window, self.stride, self.val_fraction = int(window), int(stride), float(val_fraction)
        self.masker = TrainingMasker(training_mask, block_length)
        self.synthetic = dict(synthetic or {})
        self._data: tuple[SeriesSet, SeriesSet] | None = None
        if normalizer is not None:
            self.normalizer = Normalizer.from_dict(normalizer)
        else:
            self.normalizer = Normalizer.fit(self.splits()[0], window=self.window)
        self.columns = self.normalizer.columns
        self.sample_shape = (len(self.columns), self.window)

    # -- data

    def raw_data(self):
        """What ``read_series`` reads for the configured source."""
        if self.source == "co2":
            return co2_frame()
        if self.source == "macrodata":
            return macrodata_frame(self.read_options["columns"] or MACRODATA_COLUMNS)
        if self.source == "synthetic":
            return synthetic_frames(**self.synthetic)[0]
        return self.path if isinstance(self.path, (str, Path)) else [str(p) for p in self.path]

    def splits(self) -> tuple[SeriesSet, SeriesSet]:
        """(training, validation) series, read once."""
        if self._data is None:
            options = dict(self.read_options)
            if self.source == "macrodata":
                options["columns"] = None
            self._data = split_by_time(read_series(self.raw_data(), **options), self.val_fraction)
        return self._data

    def datamodule(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> WindowDataModule:
        train, val = self.splits()
        if train.columns != self.columns:
            raise ValueError(f"data columns {train.columns} differ from the normalizer's {self.columns}")
        return WindowDataModule(
            WindowDataset(make_windows(train, self.window, self.stride), self.normalizer),
            WindowDataset(make_windows(val, self.window, self.stride), self.normalizer),
            batch_size,
            num_workers,
            seed,
        )

    def checkpoint_kwargs(self) -> dict:
        """Constructor kwargs (plain types) to store in checkpoints beside the configured ones, so
        that the domain is rebuilt without reading its data: the fitted normaliser."""
        return {"normalizer": self.normalizer.to_dict()}

    # -- model

    def build_net(self) -> nn.Module:
        return instantiate(self.net_cfg, num_features=len(self.columns))

    def training_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> TrainingBatch:
        """Hide some observed values; condition on the rest; the loss counts the hidden ones only.
        Each window is centred on the mean of its conditioning values (``window_offset``), as the
        denoiser does at sampling time, so the network learns shapes, not levels."""
        x = batch["x"]
        observed = batch["mask"] > 0
        hidden = self.masker(observed, generator)
        cond_mask = (observed & ~hidden).to(x.dtype)
        centred = (x - window_offset(x, cond_mask)) * observed.to(x.dtype)
        cond = {"cond_values": centred * cond_mask, "cond_mask": cond_mask}
        if "time_pos" in batch:
            cond["time_pos"] = batch["time_pos"]
        return TrainingBatch(x=centred, cond=cond, loss_mask=(observed & hidden).to(x.dtype))

    def imputation_inputs(self, x: Tensor, cond_mask: Tensor, time_pos: Tensor | None = None) -> dict:
        """Keyword arguments for ``sampler.sample``: the given values condition the network and
        are the sampler's known region, so they come back exactly. Their mean per window and
        variable is the denoiser's ``offset``; the network sees values centred on it."""
        cond_mask = cond_mask.to(x.dtype)
        known = x * cond_mask
        offset = window_offset(x, cond_mask)
        cond = {"cond_values": (x - offset) * cond_mask, "cond_mask": cond_mask, "offset": offset}
        if time_pos is not None:
            cond["time_pos"] = time_pos.to(x.dtype)
        return {"cond": cond, "known_mask": cond_mask, "known_values": known}

    def example_batch(self, n: int = 4, seed: int = 0) -> dict[str, Tensor]:
        """``n`` validation windows (training ones if there is no validation data) with a fixed
        block of every variable hidden, for previews: ``x``, ``mask``, ``cond_mask``, ``time_pos``."""
        train, val = self.splits()
        windows = make_windows(val if val.series else train, self.window, self.window)
        x, mask = to_model_space(windows.values[:n], self.normalizer)
        generator = torch.Generator().manual_seed(seed)
        hidden = block_hidden(mask > 0, generator, (self.window // 4, self.window // 4), all_features_prob=1.0)
        cond_mask = mask * (~hidden).float()
        return {
            "x": x,
            "mask": mask,
            "cond_mask": cond_mask,
            "time_pos": torch.as_tensor(windows.time_pos[:n], dtype=torch.float32),
        }

    def sampling_inputs(self, n: int, labels: Tensor | None = None, seed: int = 0) -> dict:
        """Previews and the generic sample CLI impute held-out windows with a block hidden (see
        ``example_batch``), cycling through them when ``n`` exceeds their number."""
        if labels is not None:
            raise ValueError("the timeseries domain has no classes; leave label unset")
        example = self.example_batch(n, seed)
        rows = torch.arange(n) % example["x"].shape[0]
        return self.imputation_inputs(example["x"][rows], example["cond_mask"][rows], example["time_pos"][rows])

    # -- output

    def decode(self, x: Tensor) -> np.ndarray:
        """Model space [..., K, L] -> values in data units (float64 numpy)."""
        return self.normalizer.denormalize(x, feature_axis=-2)

    def preview(
        self,
        x: Tensor,
        path: Path,
        labels: Tensor | None = None,
        *,
        observed: Tensor | None = None,
        mask: Tensor | None = None,
        time_pos: Tensor | None = None,
        max_windows: int = 4,
        max_features: int = 4,
    ) -> Path:
        """Plot windows (rows) by variables (columns): the median of the samples as a line, a
        5-95 % band when ``x`` holds several samples per window ([S, N, K, L]), and the given
        values ``observed`` (model space) where ``mask`` is 1 as dots."""
        samples = self.decode(x if x.ndim == 4 else x[None])
        n_windows, n_features = min(samples.shape[1], max_windows), min(samples.shape[2], max_features)
        given = self.decode(observed) if observed is not None else None
        given_mask = mask.detach().cpu().numpy() > 0 if mask is not None else None
        steps = samples.shape[-1]
        positions = (
            time_pos.detach().cpu().numpy() if time_pos is not None else np.tile(np.arange(steps), (n_windows, 1))
        )
        fig = Figure(figsize=(3.2 * n_features, 2.0 * n_windows), layout="constrained")
        axes = fig.subplots(n_windows, n_features, squeeze=False)
        for w in range(n_windows):
            pos = positions[w] if positions.ndim == 2 else positions
            for k in range(n_features):
                ax = axes[w, k]
                series = samples[:, w, k]
                if len(series) > 1:
                    low, high = np.quantile(series, [0.05, 0.95], axis=0)
                    ax.fill_between(pos, low, high, color="tab:blue", alpha=0.25, linewidth=0)
                ax.plot(pos, np.median(series, axis=0), color="tab:blue", linewidth=1.0)
                if given is not None and given_mask is not None:
                    shown = given_mask[w, k]
                    ax.plot(pos[shown], given[w, k][shown], ".", color="black", markersize=2.5)
                if w == 0:
                    ax.set_title(self.columns[k], fontsize=9)
                ax.tick_params(labelsize=7)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path

    def save(
        self,
        x: Tensor,
        out_dir: Path,
        labels: Tensor | None,
        seeds: list[int],
        trajectory: Tensor | None = None,
        *,
        observed: Tensor | None = None,
        mask: Tensor | None = None,
        time_pos: Tensor | None = None,
    ) -> list[Path]:
        """Write ``windows.csv`` (one row per window and step: the median per variable, with
        ``<var>_q05``/``<var>_q95`` when ``x`` holds several samples per window [S, N, K, L] and
        ``<var>_observed`` when ``mask`` is given), ``samples.npz`` (every sample in data units and
        in model space, seeds, columns), ``grid.png`` (the windows) and, with a trajectory, ``strip.png``
        (file names shared by every domain)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        samples = x if x.ndim == 4 else x[None]
        values = self.decode(samples)
        s, n, _, steps = values.shape
        positions = (
            time_pos.detach().cpu().numpy() if time_pos is not None else np.tile(np.arange(steps, dtype=float), (n, 1))
        )
        table = {
            "window": np.repeat(np.arange(n), steps),
            "step": np.tile(np.arange(steps), n),
            "time_pos": np.broadcast_to(positions, (n, steps)).reshape(-1),
        }
        if s == 1 and len(seeds) == n:
            table["seed"] = np.repeat(np.asarray(seeds), steps)
        median = np.median(values, axis=0)
        quantiles = np.quantile(values, [0.05, 0.95], axis=0) if s > 1 else None
        observed_flags = mask.detach().cpu().numpy() > 0 if mask is not None else None
        for k, column in enumerate(self.columns):
            table[column] = median[:, k].reshape(-1)
            if quantiles is not None:
                table[f"{column}_q05"] = quantiles[0, :, k].reshape(-1)
                table[f"{column}_q95"] = quantiles[1, :, k].reshape(-1)
            if observed_flags is not None:
                table[f"{column}_observed"] = observed_flags[:, k].reshape(-1).astype(int)
        paths = [out_dir / "windows.csv", out_dir / SAMPLES_FILE]
        pd.DataFrame(table).to_csv(paths[0], index=False)
        np.savez(
            paths[1],
            values=values,
            model_space=samples.detach().cpu().numpy(),
            seeds=np.asarray(seeds),
            columns=np.asarray(self.columns),
        )
        paths.append(self.preview(samples, out_dir / GRID_FILE, observed=observed, mask=mask, time_pos=time_pos))
        if trajectory is not None:
            paths.append(self.progression(trajectory, out_dir / STRIP_FILE))
        return paths

    def progression(self, trajectory: Tensor, path: Path) -> Path:
        """The first window's first variable at each recorded step, from noisy (light) to final (dark)."""
        curves = self.decode(trajectory[:, 0])[:, 0]
        fig = Figure(figsize=(6, 2.5), layout="constrained")
        ax = fig.subplots()
        for i, curve in enumerate(curves):
            shade = i / max(1, len(curves) - 1)
            ax.plot(curve, color=matplotlib.colormaps["viridis"](1 - shade), linewidth=0.6 + shade)
        ax.set_title(f"{self.columns[0]}: x0 estimate while sampling (light: early, dark: final)", fontsize=9)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path
