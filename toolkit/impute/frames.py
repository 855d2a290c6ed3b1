"""Input frames adapted for the model: reading them into series that remember their input rows,
forecast rows appended to them, and training data written where the domain reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.domains.timeseries import Series, parse_times, read_series, time_grid

ROW_COLUMN = "__imputer_row__"  # input row numbers, carried through read_series to undo its sorting


@dataclass
class Prepared:
    """One input frame, read for the model: its series (model column order) and, per series, the
    input row of each of its steps (-1 for time stamps missing from the input's regular grid, which
    ``read_series`` inserts as gaps). ``names``: each series' id in the series-id column, None for a
    frame without one; window seeds derive from it, never from the frame's place in a call."""

    frame: pd.DataFrame
    variables: list
    series: list[Series]
    rows: list[np.ndarray]
    names: list[str | None]


def variable_columns(frame: pd.DataFrame, time_column: str | None, series_column: str | None) -> list:
    reserved = {c for c in (time_column, series_column) if c is not None}
    return [c for c in frame.columns if str(c) not in reserved]


def _forecast_future(times: pd.Index, horizon: int, where: str) -> pd.Index:
    """``horizon`` time stamps after the last of ``times``, continuing their regular grid (see
    ``time_grid``: pandas' own frequency for dates of any resolution and time zone, the smallest
    step for numbers); a PeriodIndex continues with its own frequency."""
    ordered = times.sort_values()
    if isinstance(ordered, pd.PeriodIndex):
        return pd.period_range(ordered[-1] + 1, periods=horizon, freq=ordered.freq)
    return time_grid(ordered, where).future(horizon, where)


def _empty_rows(frame: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """Rows of missing values with ``frame``'s columns and dtypes (integers as nullable Int64)."""
    columns = {}
    for column in frame.columns:
        dtype = frame[column].dtype
        if pd.api.types.is_integer_dtype(dtype):
            columns[column] = pd.Series(pd.NA, index=index, dtype="Int64")
        else:
            columns[column] = pd.Series(np.nan, index=index, dtype=dtype)
    return pd.DataFrame(columns, index=index)


def extend_frame(frame: pd.DataFrame, horizon: int, time_column: str | None, series_column: str | None) -> pd.DataFrame:
    """``frame`` with ``horizon`` missing steps appended to each of its series (after all of its
    rows). Integer variable columns become nullable Int64 so that they stay integers; a text time
    column is parsed to datetimes."""
    if time_column is not None and time_column not in frame.columns and time_column in frame.index.names:
        time_column = None  # the time stamps are the index
    variables = variable_columns(frame, time_column, series_column)
    frame = frame.astype({c: "Int64" for c in variables if pd.api.types.is_integer_dtype(frame[c].dtype)})
    if time_column is not None:
        if time_column not in frame.columns:
            raise ValueError(f"time column {time_column!r} not found; columns are {list(frame.columns)}")
        if not pd.api.types.is_numeric_dtype(frame[time_column].dtype):
            frame = frame.assign(**{time_column: parse_times(frame[time_column])})
    groups = [(None, frame)] if series_column is None else list(frame.groupby(series_column, sort=False))
    parts, next_row = [frame], frame.index.stop if isinstance(frame.index, pd.RangeIndex) else None
    for series_id, part in groups:
        where = "the frame" if series_column is None else f"series {series_id!r}"
        if next_row is not None:
            index = pd.RangeIndex(next_row, next_row + horizon)
            next_row += horizon
        else:
            index = _forecast_future(part.index, horizon, where)
        rows = _empty_rows(part, index)
        if time_column is not None:
            rows[time_column] = _forecast_future(pd.Index(part[time_column]), horizon, where)
        if series_column is not None:
            rows[series_column] = series_id
        parts.append(rows)
    return pd.concat(parts)


def prepare_frame(frame: pd.DataFrame, columns: list[str], time: str | None, series_id: str | None) -> Prepared:
    """``frame`` read for a model of variables ``columns``, with the time and series-id columns
    resolved: its variable columns must be the model's, numeric (or all missing)."""
    variables = variable_columns(frame, time, series_id)
    names = [str(c) for c in variables]
    missing = [c for c in columns if c not in names]
    extra = [c for c in names if c not in columns]
    if missing or extra:
        raise ValueError(
            f"the frame's variable columns {names} differ from the model's {columns}: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"not in the model {extra}" if extra else "")
            + f" (time column: {time!r}, series column: {series_id!r}; set time_column/series_column "
            "for columns that hold times or ids)"
        )
    for column in variables:
        dtype = frame[column].dtype
        if pd.api.types.is_bool_dtype(dtype):
            raise ValueError(f"column {column!r} is boolean; the model imputes numbers: convert it with astype(float)")
    work = frame.copy()
    for column in variables:
        if not pd.api.types.is_numeric_dtype(work[column].dtype) and work[column].isna().all():
            work[column] = work[column].astype(float)
    work[ROW_COLUMN] = np.arange(len(work), dtype=float)
    data = read_series(
        work,
        time_column=time,
        series_column=series_id,
        columns=[*columns, ROW_COLUMN],
        allow_all_missing=True,
    )
    as_text = [c for c in variables if not pd.api.types.is_numeric_dtype(work[c].dtype)]
    if as_text:
        raise ValueError(
            f"columns {as_text} hold numbers stored as text (dtype {work[as_text[0]].dtype}); "
            "convert them with pd.to_numeric first"
        )
    series = [Series(s.name, s.index, s.positions, s.values[:, :-1]) for s in data.series]
    rows = [np.nan_to_num(s.values[:, -1], nan=-1).astype(np.int64) for s in data.series]
    names = [s.name if series_id is not None else None for s in data.series]
    return Prepared(frame, variables, series, rows, names)


def input_frames(data) -> dict:
    """``{None: frame}`` for one DataFrame, ``{name: frame}`` for a dict of them."""
    if isinstance(data, pd.DataFrame):
        return {None: data}
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("no time series given: the dict of frames is empty")
        bad = [k for k, v in data.items() if not isinstance(v, pd.DataFrame)]
        if bad:
            raise TypeError(f"entries {bad} are not DataFrames; pass a DataFrame or a dict of DataFrames")
        return dict(data)
    raise TypeError(f"cannot impute a {type(data).__name__}; pass a DataFrame or a dict of DataFrames")


def training_files(data, folder: Path) -> Path:
    """Where the domain reads the training data: the given path, or the frames written as Parquet
    (which keeps the index and dtypes)."""
    if isinstance(data, (str, Path)):
        if not Path(data).exists():
            raise FileNotFoundError(f"training data {data} does not exist; pass a CSV/Parquet file or a folder")
        return Path(data).resolve()
    frames = input_frames(data)
    folder.mkdir(parents=True, exist_ok=True)
    if None in frames:
        path = folder / "series.parquet"
        frames[None].rename(columns=str).to_parquet(path)
        return path
    for i, frame in enumerate(frames.values()):
        frame.rename(columns=str).to_parquet(folder / f"series_{i:04d}.parquet")
    return folder
