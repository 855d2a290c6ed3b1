"""Reading and validating time series: files and frames in, ``SeriesSet`` on a regular grid out
(the rules are in the package docstring)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.domains.timeseries.grid import step_name, time_grid

FILE_SUFFIXES = (".csv", ".parquet", ".pq")
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
            f"{where}: {grid.missing} time stamps are missing from its regular grid (step {step_name(grid.step)}); "
            "they are imputed as gaps of every variable",
            UserWarning,
            stacklevel=3,
        )
        full = np.full((len(grid.stamps), values.shape[1]), np.nan)
        full[grid.slots] = values
        index, values = grid.stamps, full
    return Series(name, index, np.arange(len(index), dtype=float), values)


def read_series(
    data,
    *,
    time_column: str | None = None,
    series_column: str | None = None,
    columns: Sequence[str] | None = None,
    allow_all_missing: bool = False,
) -> SeriesSet:
    """Read and validate time series (see the package docstring for every rule)."""
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
