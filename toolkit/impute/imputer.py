"""The Imputer: fits or loads a time-series diffusion model and fills the gaps of frames with it."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from toolkit import callbacks
from toolkit.config import compose_config
from toolkit.core import sampler as samplers
from toolkit.domains.timeseries import Series, SeriesSet, TimeSeriesDomain, make_windows, to_model_space
from toolkit.impute.frames import Prepared, extend_frame, input_frames, prepare_frame, training_files
from toolkit.impute.result import ImputationResult, check_quantiles
from toolkit.impute.stitching import most_central, window_seed
from toolkit.module import DiffusionModule, load_module, save_module
from toolkit.train import train

DEFAULT_PATIENCE = 5  # early_stopping=True when the config's patience is null (conf/domain/timeseries.yaml: 5)
OPEN_CONFIG_SECTIONS = ("domain.net.", "trainer.")  # constructor kwargs: keys beyond the defaults are fine
# Cells (variables x steps x windows) per network call when sampling. CSDINet's CPU time per cell, measured at one
# thread, is lowest from about 2,000 to 16,000 cells and doubles past 100,000 (activations leave the caches):
# K=32, L=128: 16.9 us a cell at 8,192, 34.0 at 262,144; K=12, L=32: 14.5-18.3 up to 49,152, 31.6 at 196,608.
SAMPLING_TOKENS = 8192


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


def keyword_or_config(name: str, keyword, overrides: dict, default, key: str | None = None):
    """The value of a ``fit`` keyword that is also a config key (``key``, default ``domain.<name>``):
    either one, or ``default``. Both given and different is an error naming both values, since
    neither can be silently preferred. The config key is removed from ``overrides``."""
    key = key or f"domain.{name}"
    given = {k: overrides.pop(k) for k in (key, key.replace(".", "__")) if k in overrides}
    if len(set(map(repr, given.values()))) > 1:
        raise ValueError(f"config keys {' and '.join(given)} disagree: {given}; give {name}= once")
    config_value = next(iter(given.values()), None)
    if keyword is not None and config_value is not None and keyword != config_value:
        raise ValueError(
            f"{name}={keyword!r} and the config key {next(iter(given))}={config_value!r} disagree; "
            f"give one of them (the keyword {name}= is the documented one)"
        )
    return keyword if keyword is not None else config_value if config_value is not None else default


def stopping_settings(early_stopping: bool | None, patience: int | None, overrides: dict) -> dict:
    """The ``early_stopping.patience`` override of ``fit``'s ``early_stopping``/``patience`` keywords
    (none: the config's). ``early_stopping=True`` without a patience uses the config's, else
    ``DEFAULT_PATIENCE``."""
    patience = keyword_or_config("patience", patience, overrides, None, "early_stopping.patience")
    if early_stopping is False:
        if patience is not None:
            raise ValueError(f"early_stopping=False and patience={patience!r} contradict each other; give one")
        return {"early_stopping.patience": None}
    if patience is not None:
        return {"early_stopping.patience": patience}
    if early_stopping:
        configured = compose_config(["domain=timeseries"]).early_stopping.patience
        return {"early_stopping.patience": configured or DEFAULT_PATIENCE}
    return {}


class Imputer:
    """Fills gaps of multivariate time series with a trained time-series diffusion model (see
    ``toolkit.impute``'s docstring for how input is read, windows are stitched and dtypes kept)."""

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
        window: int | None = None,
        stride: int | None = None,
        max_steps: int | None = None,
        seed: int = 0,
        batch_size: int = 32,
        time_column: str | None = None,
        series_column: str | None = None,
        columns: Sequence[str] | None = None,
        run_dir: str | Path | None = None,
        time_budget: float | str | None = None,
        early_stopping: bool | None = None,
        patience: int | None = None,
        progress: bool = True,
        **config_overrides,
    ) -> Imputer:
        """Train a model on ``data`` (a DataFrame, a dict of DataFrames, or a CSV/Parquet path) with
        the same config, module and trainer as ``python -m toolkit.train domain=timeseries``.

        ``config_overrides``: run-config keys, dotted or with ``__`` for dots, e.g.
        ``**{"domain.net.channels": 32}`` or ``optim__lr=1e-3``. With few ``max_steps`` the EMA start
        and the learning-rate warm-up are shortened to fit, unless set here. The run folder (the
        training data as Parquet, logs, checkpoints, samples) is ``run_dir``, else a temporary
        folder removed afterwards; ``save`` keeps the model.

        ``window`` and ``stride`` (default: the config's, 64 and 8 steps) may also come as the config keys
        ``domain.window``/``domain.stride``; both given with different values is a ValueError.

        ``time_budget``: stop training after this long (then the model of the last step is kept):
        seconds, or a string such as "90s", "2min", "1h" (config: ``trainer.max_time``, through
        Lightning's Trainer ``max_time``); ``max_steps`` stays the upper bound and sets the learning
        rate's decay.

        Every validation (``trainer.val_check_interval`` steps) imputes a fixed set of masked
        validation windows and logs their CRPS as ``val/crps``; ``progress`` shows it in a progress
        bar. ``early_stopping=True`` stops when ``val/crps`` has not improved for ``patience``
        validations (``patience`` alone turns it on; default: the config's ``early_stopping``).
        """
        config_overrides = dict(config_overrides)
        window = keyword_or_config("window", window, config_overrides, None)
        stride = keyword_or_config("stride", stride, config_overrides, None)
        time_budget = keyword_or_config("time_budget", time_budget, config_overrides, None, "trainer.max_time")
        if time_budget is not None:
            max_time = callbacks.time_budget(time_budget)  # a bad value fails before any work
            config_overrides["trainer.max_time"] = (
                time_budget if isinstance(time_budget, str) else max_time.total_seconds()
            )
        config_overrides.update(stopping_settings(early_stopping, patience, config_overrides))
        settings = {
            "seed": seed,
            "domain.source": "path",
            "domain.time_column": time_column,
            "domain.series_column": series_column,
            "domain.columns": list(columns) if columns is not None else None,
            "trainer.enable_progress_bar": bool(progress),
            "trainer.enable_model_summary": False,
            "data.batch_size": batch_size,
            "preview.n": 4,
            "final_samples.n": 4,
            **{f"domain.{k}": v for k, v in (("window", window), ("stride", stride)) if v is not None},
        }
        cfg = fit_config(max_steps, settings, config_overrides)
        with contextlib.ExitStack() as stack:
            if run_dir is None:
                run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="imputer_fit_"))
            run_dir = Path(run_dir)
            OmegaConf.update(cfg, "domain.path", str(training_files(data, run_dir / "data")), merge=False)
            return cls.load(train(cfg, run_dir))

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint that ``Imputer.load`` and ``toolkit.module.load_module`` read, atomically
        (``toolkit.module.save_module``)."""
        return save_module(self.module, path)

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
        batch_size: int | None = None,
        time_column: str | None = None,
        series_column: str | None = None,
        progress: bool = False,
    ) -> ImputationResult | dict[str, ImputationResult]:
        """Fill the gaps (NaN/NA) of ``data``: a DataFrame (one series, or several with a series-id
        column) -> an ``ImputationResult``; a dict of DataFrames -> a dict of results.

        ``time_column``/``series_column`` default to the model's when the frame has them.
        ``steps``/``sampler`` default to the model's sampler config; ``stride`` to half a window;
        ``batch_size`` (windows of samples per network call) to ``SAMPLING_TOKENS`` cells a call.
        """
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or None: {SAMPLING_TOKENS} cells a call), got {batch_size}")
        stride = max(1, self.window // 2) if stride is None else int(stride)
        if not 1 <= stride <= self.window:
            raise ValueError(f"stride must be in [1, window={self.window}], got {stride}")
        quantiles = check_quantiles(quantiles)
        method, steps = self._sampler_settings(sampler, steps)

        frames = input_frames(data)
        prepared = {name: self._prepare(frame, time_column, series_column) for name, frame in frames.items()}
        all_series = [s for p in prepared.values() for s in p.series]
        names = [name for p in prepared.values() for name in p.names]
        stitched = self._sample(
            all_series, names, int(n_samples), int(seed), steps, method, stride, batch_size, progress
        )

        results, offset = {}, 0
        for name, p in prepared.items():
            model_order = np.full((n_samples, len(p.frame), len(self.columns)), np.nan)
            for series_samples, rows in zip(stitched[offset : offset + len(p.series)], p.rows, strict=True):
                in_input = rows >= 0
                model_order[:, rows[in_input]] = series_samples[:, in_input]
            offset += len(p.series)
            order = [self.columns.index(str(c)) for c in p.variables]
            samples = model_order[:, :, order]
            observed = p.frame[p.variables].notna().to_numpy()
            input_values = p.frame[p.variables].astype(float).to_numpy()
            samples = np.where(observed[None], input_values[None], samples)
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
        frames = input_frames(data)
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
        return prepare_frame(frame, self.columns, *self._resolve_columns(frame, time_column, series_column))

    def sample_windows(
        self,
        values: np.ndarray,
        time_pos: np.ndarray | None = None,
        *,
        n_samples: int = 50,
        seed: int = 0,
        steps: int | None = None,
        sampler: str | None = None,
        batch_size: int | None = None,
        window_ids: Sequence[tuple[int | str | None, int]] | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Draws for windows of the model's length: ``values`` [N, K, L] in data units and the model's
        column order, NaN = to fill -> samples [n_samples, N, K, L] in data units, observed entries as
        given. ``time_pos`` [N, L] (default 0..L-1). All windows of all samples go through ``generate``
        together, ``batch_size`` at a time (default: as many as hold ``SAMPLING_TOKENS`` cells); window
        ``i`` of sample ``s`` is seeded from
        (seed, s, window_ids[i]) (ids: (series name or number, start); default (0, i)), so results do
        not depend on the batch size (``stitching.window_seed``)."""
        values = np.asarray(values, dtype=float)
        expected = (len(self.columns), self.window)
        if values.ndim != 3 or values.shape[1:] != expected:
            raise ValueError(f"values must be [N, {expected[0]} variables, {expected[1]} steps], got {values.shape}")
        method, steps = self._sampler_settings(sampler, steps)
        x, observed = to_model_space(values, self.domain.normalizer)
        if not torch.isfinite(x).all():
            column = self.columns[int(torch.nonzero(~torch.isfinite(x))[0, 1])]
            raise ValueError(
                f"column {column!r} holds values too far from the training data to represent (they overflow "
                "after normalisation); check their units against the data the model was trained on"
            )
        n_windows = len(values)
        if time_pos is None:
            time_pos = np.broadcast_to(np.arange(self.window, dtype=float), (n_windows, self.window))
        time_pos = torch.tensor(np.asarray(time_pos, dtype=float), dtype=torch.float32)
        ids = [(0, w) for w in range(n_windows)] if window_ids is None else list(window_ids)
        seeds = [window_seed(seed, s, *ids[w]) for s in range(n_samples) for w in range(n_windows)]
        rows = torch.arange(n_samples * n_windows) % n_windows  # every window once per sample
        batch_size = batch_size or max(1, SAMPLING_TOKENS // (len(self.columns) * self.window))
        drawn = self.module.generate(
            len(rows),
            seed=seeds,
            method=method,
            steps=steps,
            progress=progress,
            batch_size=batch_size,
            inputs=self.domain.imputation_inputs(x[rows], given=observed[rows], time_pos=time_pos[rows]),
        )["x"]
        samples = self.domain.decode(drawn.cpu()).reshape(n_samples, *values.shape)
        return np.where(np.isnan(values)[None], samples, values[None])

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
        names: list[str | None],
        n_samples: int,
        seed: int,
        steps: int,
        method: str,
        stride: int,
        batch_size: int | None,
        progress: bool,
    ) -> list[np.ndarray]:
        """Samples [n_samples, len(series), K] (model column order) of every series; a series' windows
        are seeded from its name (``names``, None for the one series of a frame), not its position.
        Only the windows that own a missing step are drawn: a fully observed stretch of history (as
        before a forecast) costs nothing, and each drawn window's seed does not depend on the others."""
        windows = make_windows(SeriesSet(self.columns, series), self.window, stride)
        owners = [most_central(windows, i, len(s), self.window) for i, s in enumerate(series)]
        drawn = np.zeros(len(windows), dtype=bool)
        for owner, offset in owners:
            drawn[owner[np.isnan(windows.values[owner, :, offset]).any(axis=1)]] = True
        values = np.broadcast_to(windows.values, (n_samples, *windows.values.shape)).copy()  # [S, N, K, L]
        if drawn.any():
            ids = [(names[i], int(start)) for i, start in zip(windows.series_index, windows.start, strict=True)]
            values[:, drawn] = self.sample_windows(
                windows.values[drawn],
                windows.time_pos[drawn],
                n_samples=n_samples,
                seed=seed,
                steps=steps,
                sampler=method,
                batch_size=batch_size,
                window_ids=[ids[w] for w in np.flatnonzero(drawn)],
                progress=progress,
            )
        values = values.transpose(0, 1, 3, 2)  # [S, N, L, K]
        return [values[:, owner, offset] for owner, offset in owners]
