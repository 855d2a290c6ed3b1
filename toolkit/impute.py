"""Imputation API: a DataFrame with gaps in, the filled DataFrame with its uncertainty out.

    imp = Imputer.fit(df, window=64)                          # or Imputer.load("last.ckpt")
    res = imp.impute(df_with_gaps, n_samples=50, seed=0)
    res.filled, res.quantile(0.05), res.samples               # frames like the input; [S, rows, K]
    fc = imp.forecast(df, horizon=24)                         # the next 24 steps as gaps to fill

    python -m toolkit.impute input.csv --model last.ckpt --out filled.csv [--quantiles 0.05,0.95]

Decisions, relied on by the CLI, the HTTP service (toolkit/serve.py) and the tests:

- Reading and validation are the time-series domain's (``read_series``): time from ``time_column``,
  else a DatetimeIndex/PeriodIndex, else row order; duplicate time stamps, non-numeric, infinite or
  huge values and empty frames are errors; unsorted time stamps are sorted for the model and the
  result comes back in the input's row order. A series shorter than the window is padded with
  missing steps. Time stamps missing from a series' regular grid are imputed as gaps (with a
  warning) and left out of the result; irregular time stamps are an error (``time_grid``).
- Forecasts append ``horizon`` steps that continue each series' grid (``TimeGrid.future``: pandas'
  frequency for dates of any unit and time zone, the next periods of a PeriodIndex, the smallest
  step of numbers).
- The CLI turns user errors (bad model file, input or option) into one ``error:`` line with exit
  code 2 and writes its output only when all went well; warnings become ``warning:`` lines.
- The variable columns (all but the time and series-id columns) must be the model's: missing or
  extra columns are errors naming them. Boolean columns and numbers stored as text are errors.
  A column with no observed value is allowed: the model fills it from the other variables.
- Observed cells are never written: they come back bit for bit; gaps get the median of the samples.
  The input frame is not modified. Index, column order and dtypes are kept; an integer column
  (with gaps it is pandas' nullable ``Int64``) gets its imputed values rounded to integers; an
  all-missing column of object dtype (e.g. all ``None``) comes back as float64.
- Long series are cut into windows of the model's length, ``stride`` apart (default half a window,
  plus one window ending at the last step). All windows of all samples go through the sampler
  together, in batches of ``batch_size``. Overlaps are stitched by taking each step from the
  window in which it lies most central (earliest on ties): every value of a sample is then a draw
  of the model, conditioned on the most context on both sides; averaging overlapping windows
  would shrink the spread of the samples and so the quantiles.
- Seeds: window w of sample s is drawn with its own seed, derived from (seed, s, series, window
  start), so the same call with the same seed gives the same result, whatever the batch size.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from toolkit.core import sampler as samplers
from toolkit.domains.timeseries import (
    Series,
    SeriesSet,
    TimeSeriesDomain,
    make_windows,
    parse_times,
    read_frame,
    read_series,
    time_grid,
    to_model_space,
)
from toolkit.module import DiffusionModule, load_module
from toolkit.train import compose_config, train

ROW_COLUMN = "__imputer_row__"  # input row numbers, carried through read_series to undo its sorting
OPEN_CONFIG_SECTIONS = ("domain.net.", "trainer.")  # constructor kwargs: keys beyond the defaults are fine


# ----------------------------------------------------------------------------- results


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
        column = column.astype(float)  # an all-missing object column (checked by _prepare)
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


# ----------------------------------------------------------------------------- input preparation


@dataclass
class Prepared:
    """One input frame, read for the model: its series (model column order) and, per series, the
    input row of each of its steps (-1 for time stamps missing from the input's regular grid, which
    ``read_series`` inserts as gaps)."""

    frame: pd.DataFrame
    variables: list
    series: list[Series]
    rows: list[np.ndarray]


def _variables(frame: pd.DataFrame, time_column: str | None, series_column: str | None) -> list:
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
    variables = _variables(frame, time_column, series_column)
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


# ----------------------------------------------------------------------------- the imputer


def _window_seed(seed: int, sample: int, series: int, start: int) -> int:
    return int(np.random.SeedSequence([seed, sample, series, start]).generate_state(1)[0])


def fit_config(max_steps: int | None, settings: Mapping, overrides: Mapping) -> DictConfig:
    """The run config of ``python -m toolkit.train domain=timeseries`` with ``settings``, then the
    user's ``overrides`` (keys dotted or with ``__``; unknown keys are errors) applied. The EMA start
    and the warm-up are shortened to fit ``max_steps`` unless overridden."""
    cfg = compose_config(["domain=timeseries"])
    max_steps = int(cfg.trainer.max_steps if max_steps is None else max_steps)
    OmegaConf.set_struct(cfg, False)
    values = {
        "trainer.max_steps": max_steps,
        "ema.start_step": min(cfg.ema.start_step, max_steps // 2),
        "optim.warmup_steps": min(cfg.optim.warmup_steps, max(1, max_steps // 10)),
        **settings,
    }
    for key, value in overrides.items():
        key = key.replace("__", ".")
        known = OmegaConf.select(cfg, key, default=KeyError) is not KeyError
        if not known and not key.startswith(OPEN_CONFIG_SECTIONS):
            raise ValueError(f"unknown config key {key!r}; see conf/config.yaml and conf/domain/timeseries.yaml")
        values[key] = value
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


class Imputer:
    """Fills gaps of multivariate time series with a trained time-series diffusion model (see the
    module docstring for how input is read, windows are stitched and dtypes kept)."""

    def __init__(self, module: DiffusionModule):
        if not isinstance(module.domain, TimeSeriesDomain):
            raise ValueError(
                f"the Imputer needs a time-series model (trained with domain=timeseries); "
                f"this one is a {module.domain.name!r} model"
            )
        self.module = module.eval()
        self.domain: TimeSeriesDomain = module.domain

    # -- construction

    @classmethod
    def load(cls, path: str | Path, map_location: str = "cpu") -> Imputer:
        """An imputer from a checkpoint: ``last.ckpt`` of ``python -m toolkit.train domain=timeseries``
        or a file written by ``save``. A missing file is a FileNotFoundError; a folder, a file that is
        not a readable checkpoint, or another domain's model a ValueError naming the file."""
        path = Path(path)
        try:
            return cls(load_module(path, map_location=map_location))
        except ValueError as error:
            raise ValueError(str(error) if str(path) in str(error) else f"model {path}: {error}") from error

    @classmethod
    def fit(
        cls,
        data,
        *,
        window: int = 64,
        stride: int = 8,
        max_steps: int | None = None,
        seed: int = 0,
        batch_size: int = 32,
        time_column: str | None = None,
        series_column: str | None = None,
        columns: Sequence[str] | None = None,
        run_dir: str | Path | None = None,
        **config_overrides,
    ) -> Imputer:
        """Train a model on ``data`` (a DataFrame, a dict of DataFrames, or a CSV/Parquet path) with
        the same config, module and trainer as ``python -m toolkit.train domain=timeseries``.

        ``config_overrides``: run-config keys, dotted or with ``__`` for dots, e.g.
        ``**{"domain.net.channels": 32}`` or ``optim__lr=1e-3``. With few ``max_steps`` the EMA start
        and the learning-rate warm-up are shortened to fit, unless set here. The run folder (the
        training data as Parquet, logs, checkpoints, samples) is ``run_dir``, else a temporary
        folder removed afterwards; ``save`` keeps the model.
        """
        settings = {
            "seed": seed,
            "domain.source": "path",
            "domain.window": window,
            "domain.stride": stride,
            "domain.time_column": time_column,
            "domain.series_column": series_column,
            "domain.columns": list(columns) if columns is not None else None,
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
            "data.batch_size": batch_size,
            "preview.n": 4,
            "final_samples.n": 4,
        }
        cfg = fit_config(max_steps, settings, config_overrides)
        with contextlib.ExitStack() as stack:
            if run_dir is None:
                run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="imputer_fit_"))
            run_dir = Path(run_dir)
            OmegaConf.update(cfg, "domain.path", str(_training_files(data, run_dir / "data")), merge=False)
            return cls.load(train(cfg, run_dir))

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint that ``Imputer.load`` and ``toolkit.module.load_module`` read, atomically
        (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = {
            "state_dict": self.module.state_dict(),
            DiffusionModule.CHECKPOINT_HYPER_PARAMS_KEY: {"config": self.module.config},
            "pytorch-lightning_version": lightning.__version__,
        }
        partial = path.with_name(f".{path.name}.partial")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    # -- properties of the model

    @property
    def columns(self) -> list[str]:
        """The variables the model imputes, in its order."""
        return list(self.domain.columns)

    @property
    def window(self) -> int:
        return self.domain.window

    @property
    def time_column(self) -> str | None:
        return self.domain.read_options["time_column"]

    @property
    def series_column(self) -> str | None:
        return self.domain.read_options["series_column"]

    # -- imputation

    def impute(
        self,
        data,
        *,
        n_samples: int = 50,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        seed: int = 0,
        steps: int | None = None,
        sampler: str | None = None,
        stride: int | None = None,
        batch_size: int = 512,
        time_column: str | None = None,
        series_column: str | None = None,
        progress: bool = False,
    ) -> ImputationResult | dict[str, ImputationResult]:
        """Fill the gaps (NaN/NA) of ``data``: a DataFrame (one series, or several with a series-id
        column) -> an ``ImputationResult``; a dict of DataFrames -> a dict of results.

        ``time_column``/``series_column`` default to the model's when the frame has them.
        ``steps``/``sampler`` default to the model's sampler config; ``stride`` to half a window.
        """
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stride = max(1, self.window // 2) if stride is None else int(stride)
        if not 1 <= stride <= self.window:
            raise ValueError(f"stride must be in [1, window={self.window}], got {stride}")
        quantiles = check_quantiles(quantiles)
        method, steps = self._sampler_settings(sampler, steps)

        frames = _input_frames(data)
        prepared = {name: self._prepare(frame, time_column, series_column) for name, frame in frames.items()}
        all_series = [s for p in prepared.values() for s in p.series]
        stitched = self._sample(all_series, int(n_samples), int(seed), steps, method, stride, batch_size, progress)

        results, offset = {}, 0
        for name, p in prepared.items():
            model_order = np.full((n_samples, len(p.frame), len(self.columns)), np.nan)
            for series_samples, rows in zip(stitched[offset : offset + len(p.series)], p.rows, strict=True):
                given = rows >= 0
                model_order[:, rows[given]] = series_samples[:, given]
            offset += len(p.series)
            order = [self.columns.index(str(c)) for c in p.variables]
            samples = model_order[:, :, order]
            observed = p.frame[p.variables].notna().to_numpy()
            given = p.frame[p.variables].astype(float).to_numpy()
            samples = np.where(observed[None], given[None], samples)
            results[name] = ImputationResult(p.frame.copy(), list(p.variables), samples, quantiles)
        return results.get(None, results)

    def forecast(
        self,
        data,
        horizon: int,
        *,
        time_column: str | None = None,
        series_column: str | None = None,
        **impute_options,
    ) -> ImputationResult | dict[str, ImputationResult]:
        """Impute ``horizon`` future steps of each series (appended as gaps at the series' frequency)
        together with any gaps in the history. The result's frames hold history and future;
        integer columns become nullable Int64 and a text time column datetimes. ``horizon`` must be
        shorter than the window, so that every future step shares a window with observed history."""
        if not isinstance(horizon, (int, np.integer)) or not 1 <= horizon < self.window:
            raise ValueError(
                f"horizon must be an int in [1, {self.window - 1}] (shorter than the model's window of "
                f"{self.window} steps, so that the future is conditioned on the past); got {horizon!r}"
            )
        frames = _input_frames(data)
        extended = {}
        for name, frame in frames.items():
            time, series = self._resolve_columns(frame, time_column, series_column)
            extended[name] = extend_frame(frame, int(horizon), time, series)
        inputs = extended.get(None, extended)
        return self.impute(inputs, time_column=time_column, series_column=series_column, **impute_options)

    # -- internals

    def _resolve_columns(self, frame: pd.DataFrame, time_column, series_column) -> tuple[str | None, str | None]:
        """The given time/series-id columns, else the model's where the frame has them."""
        present = {str(c) for c in frame.columns} | {str(n) for n in frame.index.names if n is not None}
        time = time_column if time_column is not None else (self.time_column if self.time_column in present else None)
        series = series_column
        if series is None and self.series_column in {str(c) for c in frame.columns}:
            series = self.series_column
        return time, series

    def _prepare(self, frame: pd.DataFrame, time_column, series_column) -> Prepared:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"expected a DataFrame, got {type(frame).__name__}")
        time, series_id = self._resolve_columns(frame, time_column, series_column)
        variables = _variables(frame, time, series_id)
        names = [str(c) for c in variables]
        missing = [c for c in self.columns if c not in names]
        extra = [c for c in names if c not in self.columns]
        if missing or extra:
            raise ValueError(
                f"the frame's variable columns {names} differ from the model's {self.columns}: "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"not in the model {extra}" if extra else "")
                + f" (time column: {time!r}, series column: {series_id!r}; set time_column/series_column "
                "for columns that hold times or ids)"
            )
        for column in variables:
            dtype = frame[column].dtype
            if pd.api.types.is_bool_dtype(dtype):
                raise ValueError(
                    f"column {column!r} is boolean; the model imputes numbers: convert it with astype(float)"
                )
        work = frame.copy()
        for column in variables:
            if not pd.api.types.is_numeric_dtype(work[column].dtype) and work[column].isna().all():
                work[column] = work[column].astype(float)
        work[ROW_COLUMN] = np.arange(len(work), dtype=float)
        data = read_series(
            work,
            time_column=time,
            series_column=series_id,
            columns=[*self.columns, ROW_COLUMN],
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
        return Prepared(frame, variables, series, rows)

    def sample_windows(
        self,
        values: np.ndarray,
        time_pos: np.ndarray | None = None,
        *,
        n_samples: int = 50,
        seed: int = 0,
        steps: int | None = None,
        sampler: str | None = None,
        batch_size: int = 512,
        window_ids: Sequence[tuple[int, int]] | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Draws for windows of the model's length: ``values`` [N, K, L] in data units and the model's
        column order, NaN = to fill -> samples [n_samples, N, K, L] in data units, observed entries as
        given. ``time_pos`` [N, L] (default 0..L-1). All windows of all samples go through the sampler
        together, ``batch_size`` at a time; window ``i`` of sample ``s`` is seeded from
        (seed, s, window_ids[i]) (default ids (0, i)), so results do not depend on the batch size."""
        values = np.asarray(values, dtype=float)
        expected = (len(self.columns), self.window)
        if values.ndim != 3 or values.shape[1:] != expected:
            raise ValueError(f"values must be [N, {expected[0]} variables, {expected[1]} steps], got {values.shape}")
        method, steps = self._sampler_settings(sampler, steps)
        x, mask = to_model_space(values, self.domain.normalizer)
        if not torch.isfinite(x).all():
            column = self.columns[int(torch.nonzero(~torch.isfinite(x))[0, 1])]
            raise ValueError(
                f"column {column!r} holds values too far from the training data to represent (they overflow "
                "after normalisation); check their units against the data the model was trained on"
            )
        n_windows = len(values)
        if time_pos is None:
            time_pos = np.broadcast_to(np.arange(self.window, dtype=float), (n_windows, self.window))
        time_pos = torch.as_tensor(np.asarray(time_pos, dtype=float), dtype=torch.float32)
        ids = [(0, w) for w in range(n_windows)] if window_ids is None else list(window_ids)
        items = [(s, w) for s in range(n_samples) for w in range(n_windows)]
        seeds = [_window_seed(seed, s, *ids[w]) for s, w in items]
        device = self.module.device
        drawn = []
        for begin in range(0, len(items), batch_size):
            index = torch.tensor([w for _, w in items[begin : begin + batch_size]])
            inputs = self.domain.imputation_inputs(
                x[index].to(device), mask[index].to(device), time_pos[index].to(device)
            )
            drawn.append(
                samplers.sample(
                    self.module.denoiser(),
                    (len(index), *self.domain.sample_shape),
                    self.module.schedule,
                    method,
                    steps,
                    seeds[begin : begin + batch_size],
                    progress=progress,
                    device=device,
                    **inputs,
                ).cpu()
            )
        samples = self.domain.decode(torch.cat(drawn)).reshape(n_samples, *values.shape)
        observed = ~np.isnan(values)
        return np.where(observed[None], values[None], samples)

    def _sampler_settings(self, sampler: str | None, steps: int | None) -> tuple[str, int]:
        """The sampler method and step count: the given ones, else the model's sampler config."""
        method = sampler or self.module.config["sampler"]["method"]
        samplers.get(method)
        steps = int(self.module.config["sampler"]["steps"] if steps is None else steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return method, steps

    def _sample(
        self,
        series: list[Series],
        n_samples: int,
        seed: int,
        steps: int,
        method: str,
        stride: int,
        batch_size: int,
        progress: bool,
    ) -> list[np.ndarray]:
        """Samples [n_samples, len(series), K] (model column order) of every series."""
        windows = make_windows(SeriesSet(self.columns, series), self.window, stride)
        values = self.sample_windows(
            windows.values,
            windows.time_pos,
            n_samples=n_samples,
            seed=seed,
            steps=steps,
            sampler=method,
            batch_size=batch_size,
            window_ids=[(int(i), int(start)) for i, start in zip(windows.series_index, windows.start, strict=True)],
            progress=progress,
        ).transpose(0, 1, 3, 2)  # [S, N, L, K]
        result = []
        for i, s in enumerate(series):
            owner, offset = _most_central(windows, i, len(s), self.window)
            result.append(values[:, owner, offset])
        return result


def _most_central(windows, series_index: int, length: int, window: int) -> tuple[np.ndarray, np.ndarray]:
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


def _input_frames(data) -> dict:
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


def _training_files(data, folder: Path) -> Path:
    """Where the domain reads the training data: the given path, or the frames written as Parquet
    (which keeps the index and dtypes)."""
    if isinstance(data, (str, Path)):
        if not Path(data).exists():
            raise FileNotFoundError(f"training data {data} does not exist; pass a CSV/Parquet file or a folder")
        return Path(data).resolve()
    frames = _input_frames(data)
    folder.mkdir(parents=True, exist_ok=True)
    if None in frames:
        path = folder / "series.parquet"
        frames[None].rename(columns=str).to_parquet(path)
        return path
    for i, frame in enumerate(frames.values()):
        frame.rename(columns=str).to_parquet(folder / f"series_{i:04d}.parquet")
    return folder


# ----------------------------------------------------------------------------- CLI


def guess_time_column(frame: pd.DataFrame, imputer: Imputer, time_column: str | None, series_column: str | None):
    """For files without index information (CSV): the given time column, else the model's if
    present, else the one column that is neither a model variable nor the series id."""
    if time_column is not None:
        return time_column
    if imputer.time_column in frame.columns:
        return imputer.time_column
    series = series_column if series_column is not None else imputer.series_column
    others = [c for c in frame.columns if str(c) not in imputer.columns and c != series]
    return others[0] if len(others) == 1 else None


def parse_quantiles(text: str) -> tuple[float, ...]:
    try:
        return check_quantiles([float(q) for q in text.split(",") if q.strip()])
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in [0, 1], e.g. 0.05,0.95 ({error})"
        ) from None


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def sampler_name(text: str) -> str:
    if text not in samplers.SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown sampler {text!r}; choose one of {sorted(samplers.SAMPLERS)}")
    return text


class CliParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: ...``, with exit code 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser, *, prefix: str = ""):
    """Turn the errors a user can fix (bad files, values, options) into one ``error:`` line and exit
    code 2 instead of a traceback; the toolkit's and pandas' warnings become ``warning:`` lines."""
    failure = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        except (ValueError, TypeError, OSError) as error:
            failure = f"error: {prefix}{str(error) or type(error).__name__}\n"
    for warning in caught:
        if warning.category is UserWarning:  # not library notes such as Lightning's PossibleUserWarning
            print(f"warning: {warning.message}", file=sys.stderr)
    if failure is not None:
        parser.exit(2, failure)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="python -m toolkit.impute",
        description="Fill the gaps (empty cells) of a CSV/Parquet time series with a trained model, and "
        "optionally forecast future steps. Writes the filled table; observed values are kept as they are.",
        epilog="Input: comma-separated CSV (decimal point) or Parquet; one row per time stamp, one column per "
        "variable, empty cells are gaps. Time stamps must be one regular step apart (stamps missing from the "
        "grid are imputed with a warning). Errors exit with code 2 and one line saying what to fix.",
    )
    parser.add_argument("input", help="CSV or Parquet file with gaps (empty cells)")
    parser.add_argument(
        "--model", required=True, help="checkpoint: last.ckpt of a domain=timeseries run, or a file from Imputer.save"
    )
    parser.add_argument("--out", required=True, help="output file, .csv or .parquet (written only when all went well)")
    parser.add_argument(
        "--quantiles",
        type=parse_quantiles,
        default=(),
        help="comma-separated quantiles in [0, 1], e.g. 0.05,0.95: also write <col>_q05, <col>_q95 columns",
    )
    parser.add_argument("--n-samples", type=int_at_least(1), default=50, help="samples drawn per gap (default 50)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="random seed; same seed, same output")
    parser.add_argument(
        "--steps", type=int_at_least(1), default=None, help="sampler steps (default: the model's config)"
    )
    parser.add_argument(
        "--sampler", type=sampler_name, default=None, help=f"one of {sorted(samplers.SAMPLERS)} (default: the model's)"
    )
    parser.add_argument(
        "--stride", type=int_at_least(1), default=None, help="steps between window starts (default: half a window)"
    )
    parser.add_argument(
        "--time-column", default=None, help="column of time stamps (default: the model's, or the one non-variable one)"
    )
    parser.add_argument(
        "--series-column", default=None, help="column of series ids (default: the model's, when the file has it)"
    )
    parser.add_argument(
        "--horizon",
        type=int_at_least(0),
        default=0,
        help="also forecast this many future steps, continuing the time stamps (fewer than the model's window)",
    )
    return parser


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """CSV (floats written with round-trip precision) or Parquet, by suffix, atomically: on failure
    neither the file nor the folders made for it are left behind."""
    made = [folder for folder in path.parents if not folder.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(partial, index=False)
        else:
            frame.to_csv(partial, index=False)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        for folder in made:
            folder.rmdir()
        raise


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        parser.error(f"--out must end in .csv or .parquet, got {out.name}")
    if out.is_dir():
        parser.error(f"--out {out} is a folder; give a file name ending in .csv or .parquet")
    if out.resolve() == Path(args.input).resolve():
        parser.error(f"--out {out} is the input file; write the result to another file")
    with user_errors(parser):
        frame = read_frame(args.input)
        imputer = Imputer.load(args.model)
    with user_errors(parser, prefix=f"{args.input}: "):
        time_column = guess_time_column(frame, imputer, args.time_column, args.series_column)
        options = dict(
            n_samples=args.n_samples,
            quantiles=args.quantiles,
            seed=args.seed,
            steps=args.steps,
            sampler=args.sampler,
            stride=args.stride,
            time_column=time_column,
            series_column=args.series_column,
        )
        run = functools.partial(imputer.forecast, horizon=args.horizon) if args.horizon else imputer.impute
        table = run(frame, **options).with_quantile_columns()
    with user_errors(parser, prefix=f"cannot write --out {out}: "):
        write_frame(table, out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
