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
  together, in batches of ``batch_size`` (default: 8,192 cells a network call, where its time per cell
  is lowest). Overlaps are stitched by taking each step from the
  window in which it lies most central (earliest on ties): every value of a sample is then a draw
  of the model, conditioned on the most context on both sides; averaging overlapping windows
  would shrink the spread of the samples and so the quantiles.
- Seeds: window w of sample s is drawn with its own seed, derived from (seed, s, the series' id in
  the series-id column or none for a frame of one series, window start), so the same call with the
  same seed gives the same result whatever the batch size, and a frame gets the same draws alone or
  anywhere in a dict of frames (never from its position in the call).
- Fitting (``Imputer.fit``) trains with the CLI's config; each validation scores imputation of
  held-out windows (``val/crps``, in the progress bar), which ``early_stopping``/``patience`` stop
  on; ``time_budget`` caps the wall time. ``window``/``stride`` given both as keywords and as config
  keys must agree.
- Masks are named as in ``toolkit.domains.timeseries``: ``observed`` cells have a value, and
  every observed value of a window is ``given`` to the model; ``missing`` cells are filled.

Modules: ``result`` (``ImputationResult``), ``frames`` (input frames to series and back, forecast
rows, training files), ``stitching`` (window seeds, most central window), ``imputer``
(``Imputer``) and ``cli`` (``python -m toolkit.impute``).
"""

from toolkit.impute.cli import (
    CliParser,
    build_parser,
    guess_time_column,
    int_at_least,
    main,
    parse_quantiles,
    sampler_name,
    user_errors,
    write_frame,
)
from toolkit.impute.frames import ROW_COLUMN, Prepared, extend_frame, prepare_frame
from toolkit.impute.imputer import Imputer, fit_config
from toolkit.impute.result import ImputationResult, check_quantiles, fill_column, quantile_suffix

__all__ = [
    "ROW_COLUMN",
    "CliParser",
    "ImputationResult",
    "Imputer",
    "Prepared",
    "build_parser",
    "check_quantiles",
    "extend_frame",
    "fill_column",
    "fit_config",
    "guess_time_column",
    "int_at_least",
    "main",
    "parse_quantiles",
    "prepare_frame",
    "quantile_suffix",
    "sampler_name",
    "user_errors",
    "write_frame",
]
