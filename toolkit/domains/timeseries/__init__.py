"""Multivariate time series with gaps: reading, windows, normalisation, training masks, the domain.

Model space: a window of ``L`` steps of ``K`` variables is ``x`` ``[K, L]``, each variable
normalised by the mean and standard deviation of its observed training values, missing values set
to 0, with ``mask`` ``[K, L]`` (``observed``, below). ``time_pos`` ``[L]`` gives each step's position in
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
- A series shorter than the window is padded at the end with missing steps, so it still
  gives one window; padded steps are never conditioned on nor counted in the loss.

Train/validation split: per series, the last ``val_fraction`` of its steps (at least one, when
the series has two or more steps) is validation, the rest training; the normaliser sees training
values only. Windows of length ``window`` start every ``stride`` steps, plus one ending at the last
step so that every step is covered.

Mask vocabulary (one name per idea, used throughout this package and ``toolkit.impute``):

- ``observed``: 1 where the data has a value (0 for gaps and padding). Batches carry it under the
  key ``mask``, the name every domain's loss reads.
- ``given``: the values the model is conditioned on: at sampling time the observed values of a
  window (the sampler's known region, so they come back exactly), in training the observed values
  not hidden. The network receives it as ``cond_mask`` and the sampler as ``known_mask``, the
  names of those interfaces.
- ``hidden``: observed values withheld in training (``TrainingMasker``); the model learns to
  produce them, and the loss counts them only (``TrainingBatch.loss_mask``).
- ``missing``: not observed; what imputation fills.

Modules: ``reading`` (files and frames to validated series), ``grid`` (time grids), ``windows``
(windows, normaliser, model space), ``masks`` (training masks), ``sources`` (embedded data) and
``domain`` (``TimeSeriesDomain``: datasets, training batch, offset, output files and plots).
"""

from toolkit.domains.timeseries.domain import (
    SOURCES,
    OffsetDenoiser,
    TimeSeriesDomain,
    WindowDataModule,
    WindowDataset,
)
from toolkit.domains.timeseries.grid import MAX_GRID_RATIO, TimeGrid, time_grid
from toolkit.domains.timeseries.masks import (
    MASK_STRATEGIES,
    TrainingMasker,
    block_hidden,
    historical_hidden,
    random_hidden,
)
from toolkit.domains.timeseries.reading import (
    FILE_SUFFIXES,
    Series,
    SeriesSet,
    check_separator,
    parse_times,
    read_frame,
    read_series,
    split_by_time,
)
from toolkit.domains.timeseries.sources import (
    INTEREST_INFLATION_COLUMNS,
    MACRODATA_COLUMNS,
    co2_frame,
    interest_inflation_frame,
    macrodata_frame,
    synthetic_frames,
)
from toolkit.domains.timeseries.windows import (
    Normalizer,
    Windows,
    make_windows,
    to_model_space,
    window_offset,
    window_starts,
)

__all__ = [
    "FILE_SUFFIXES",
    "INTEREST_INFLATION_COLUMNS",
    "MACRODATA_COLUMNS",
    "MASK_STRATEGIES",
    "MAX_GRID_RATIO",
    "SOURCES",
    "Normalizer",
    "OffsetDenoiser",
    "Series",
    "SeriesSet",
    "TimeGrid",
    "TimeSeriesDomain",
    "TrainingMasker",
    "WindowDataModule",
    "WindowDataset",
    "Windows",
    "block_hidden",
    "check_separator",
    "co2_frame",
    "historical_hidden",
    "interest_inflation_frame",
    "macrodata_frame",
    "make_windows",
    "parse_times",
    "random_hidden",
    "read_frame",
    "read_series",
    "split_by_time",
    "synthetic_frames",
    "time_grid",
    "to_model_space",
    "window_offset",
    "window_starts",
]
