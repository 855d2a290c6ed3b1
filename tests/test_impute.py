"""The imputation API and CLI on a tiny model trained once for this module: guarantees (observed
values bit for bit, input untouched, index/columns/dtypes kept) over random frames and gap
patterns, stitching, seeds, several series, forecasting, bad input, checkpoints, Hydra training."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import IMPUTER_WINDOW as WINDOW
from conftest import TINY_IMPUTER as TINY_NET
from conftest import save_untrained_checkpoint
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.cli import UsageError
from toolkit.config import CONF_DIR
from toolkit.domains.timeseries import synthetic_frames
from toolkit.impute import Imputer, build_parser, extend_frame, main, quantile_suffix, write_frame
from toolkit.impute.imputer import keyword_or_config
from toolkit.impute.stitching import window_seed
from toolkit.module import load_module
from toolkit.train import train

# As Hydra overrides: ff_dim is not in conf/domain/timeseries.yaml, so it is added with "+".
HYDRA_TINY_NET = [f"{'+' if k.endswith('ff_dim') else ''}{k}={v}" for k, v in TINY_NET.items()]
FAST = {"n_samples": 4, "steps": 2}


@pytest.fixture(scope="module")
def training_frames() -> dict[str, pd.DataFrame]:
    return synthetic_frames(num_series=2, length=120, num_features=2, seed=0)[0]


@pytest.fixture(scope="module")
def imputer(training_frames, tmp_path_factory) -> Imputer:
    return Imputer.fit(
        training_frames,
        window=WINDOW,
        stride=4,
        max_steps=30,
        batch_size=16,
        run_dir=tmp_path_factory.mktemp("fit"),
        **TINY_NET,
    )


def gappy(n: int = 40, seed: int = 0, columns=("x0", "x1")) -> pd.DataFrame:
    """Hourly values around the training data's scale with about a quarter of the cells missing."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2021-03-01", periods=n, freq="h", name="time")
    values = rng.normal(size=(n, len(columns))) + 10 * np.arange(len(columns))
    values[rng.random(values.shape) < 0.25] = np.nan
    return pd.DataFrame(values, index=index, columns=list(columns))


def assert_observed_bits_kept(original: pd.DataFrame, result: pd.DataFrame) -> None:
    for column in original.columns:
        assert result[column].dtype == original[column].dtype, column
        observed = original[column].notna().to_numpy()
        dtype = getattr(original[column].dtype, "numpy_dtype", original[column].dtype)
        before = original[column][observed].to_numpy(dtype=dtype)
        after = result[column][observed].to_numpy(dtype=dtype)
        if before.dtype != object:
            assert before.tobytes() == after.tobytes(), column
        else:
            assert list(before) == list(after), column


# ----------------------------------------------------------------------------- guarantees


DTYPES = ("float64", "float32", "Float64", "Int64", "int64")


@st.composite
def frames_with_gaps(draw):
    n = draw(st.integers(1, 3 * WINDOW))
    layout = draw(st.sampled_from(["datetime", "shuffled", "range", "time_column", "irregular"]))
    columns = draw(st.sampled_from([["x0", "x1"], ["x1", "x0"]]))
    data = {}
    for column in columns:
        dtype = draw(st.sampled_from(DTYPES))
        if dtype in ("Int64", "int64"):
            values = draw(st.lists(st.integers(-60, 60), min_size=n, max_size=n))
        else:
            values = draw(
                st.lists(
                    st.floats(-60, 60, allow_nan=False, width=32 if dtype == "float32" else 64),
                    min_size=n,
                    max_size=n,
                )
            )
        series = pd.Series(values, dtype=dtype)
        if dtype != "int64":
            gaps = draw(st.lists(st.booleans(), min_size=n, max_size=n))
            series = series.mask(np.array(gaps))
        data[column] = series
    frame = pd.DataFrame(data)
    if layout in ("datetime", "shuffled"):
        frame.index = pd.date_range("2022-01-01", periods=n, freq="h", name="stamp")
        if layout == "shuffled":
            frame = frame.sample(frac=1.0, random_state=draw(st.integers(0, 100)))
    elif layout == "time_column":
        frame.insert(0, "t", np.arange(n) * 2.5)
    elif layout == "irregular":
        steps = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
        frame.index = pd.DatetimeIndex(pd.Timestamp("2022-01-01") + pd.to_timedelta(np.cumsum(steps), "h"))
    return frame, ("t" if layout == "time_column" else None)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=frames_with_gaps(), seed=st.integers(0, 2**32))
def test_random_frames_keep_observed_bits_index_columns_and_dtypes(imputer, case, seed):
    frame, time_column = case
    before = frame.copy(deep=True)
    result = imputer.impute(frame, time_column=time_column, seed=seed, quantiles=(0.1, 0.9), **FAST)
    pd.testing.assert_frame_equal(frame, before, check_exact=True)  # the input is not modified
    for out in (result.filled, result.quantile(0.1), result.quantile(0.9)):
        assert out.index.equals(frame.index) and list(out.columns) == list(frame.columns)
        assert_observed_bits_kept(frame, out)
        assert out.notna().all().all()
    variables = [c for c in frame.columns if c != time_column]
    assert result.columns == variables and result.samples.shape == (4, len(frame), 2)
    observed = frame[variables].notna().to_numpy()
    given_values = frame[variables].astype(float).to_numpy()
    assert np.array_equal(result.samples[:, observed], np.broadcast_to(given_values[observed], (4, observed.sum())))
    assert np.isfinite(result.samples).all()
    low, mid, high = (result.quantile(0.1), result.filled, result.quantile(0.9))
    for column in variables:
        gaps = frame[column].isna().to_numpy()
        lo, md, hi = (f[column].to_numpy(dtype=float)[gaps] for f in (low, mid, high))
        assert (lo <= md).all() and (md <= hi).all()
        if str(frame[column].dtype) == "Int64":
            assert (md == np.rint(md)).all()


def test_gaps_get_the_median_of_the_samples(imputer):
    frame = gappy(30)
    result = imputer.impute(frame, n_samples=5, steps=2)
    median = np.median(result.samples, axis=0)
    gaps = frame.isna().to_numpy()
    np.testing.assert_array_equal(result.filled.to_numpy()[gaps], median[gaps])
    spread = np.ptp(result.samples, axis=0)
    assert (spread[gaps] > 0).all() and (spread[~gaps] == 0).all()
    np.testing.assert_array_equal(result.quantile(0.25).to_numpy()[gaps], np.quantile(result.samples, 0.25, 0)[gaps])


def test_same_seed_same_result_whatever_the_batch_size(imputer):
    frame = gappy(50)
    first = imputer.impute(frame, seed=3, **FAST)
    again = imputer.impute(frame, seed=3, **FAST)
    chunked = imputer.impute(frame, seed=3, batch_size=5, **FAST)
    other = imputer.impute(frame, seed=4, **FAST)
    assert np.array_equal(first.samples, again.samples)
    np.testing.assert_allclose(chunked.samples, first.samples, rtol=1e-6, atol=1e-6)
    assert not np.allclose(other.samples, first.samples)


def test_unsorted_rows_give_the_sorted_result_in_input_order(imputer):
    frame = gappy(45, seed=2)
    shuffled = frame.sample(frac=1.0, random_state=0)
    ordered = imputer.impute(frame, **FAST)
    mixed = imputer.impute(shuffled, **FAST)
    assert mixed.filled.index.equals(shuffled.index)
    pd.testing.assert_frame_equal(mixed.filled.sort_index(), ordered.filled, check_exact=True, check_freq=False)


def test_steps_come_from_their_most_central_window_drawn_with_its_own_seeds(imputer):
    frame = gappy(40, seed=1)
    whole = imputer.impute(frame, stride=WINDOW // 2, **FAST)
    # Windows start at 0, 8, 16, 24; steps 0-11 are most central in the first window, which is
    # drawn with the same seeds (sample, series 0, start 0) as a frame of its 16 steps alone.
    first_window = imputer.impute(frame.iloc[:WINDOW], stride=WINDOW // 2, **FAST)
    np.testing.assert_allclose(whole.samples[:, :12], first_window.samples[:, :12], rtol=1e-6, atol=1e-6)
    gaps = frame.iloc[12:16].isna().to_numpy()
    assert gaps.any() and not np.allclose(whole.samples[:, 12:16][:, gaps], first_window.samples[:, 12:16][:, gaps])


def test_windows_are_drawn_by_generate_with_their_own_inputs(imputer, monkeypatch):
    """Chunking lives in ``DiffusionModule.generate``: the imputer passes every window's inputs and
    seed to it, in place of the domain's preview inputs (which would need the training data)."""
    calls = []
    generate = imputer.module.generate

    def recording_generate(n, **options):
        calls.append((n, options["seed"], options["batch_size"]))
        return generate(n, **options)

    def no_domain_inputs(*args, **kwargs):
        raise AssertionError("the imputer's own inputs replace the domain's")

    monkeypatch.setattr(imputer.module, "generate", recording_generate)
    monkeypatch.setattr(imputer.domain, "sampling_inputs", no_domain_inputs)
    values = np.where(np.random.default_rng(0).random((3, 2, WINDOW)) < 0.3, np.nan, 1.0)
    samples = imputer.sample_windows(values, n_samples=2, seed=4, batch_size=4, steps=2)
    assert [(n, len(seeds), batch_size) for n, seeds, batch_size in calls] == [(6, 6, 4)]
    assert len(set(calls[0][1])) == 6, "one seed per window and sample"
    assert samples.shape == (2, 3, 2, WINDOW) and np.isfinite(samples).all()


def test_default_batch_holds_a_fixed_number_of_cells(imputer, monkeypatch):
    """Without batch_size, each network call gets as many windows as fit SAMPLING_TOKENS cells (K x L each)."""
    import toolkit.impute.imputer as imputer_module

    calls = []
    generate = imputer.module.generate

    def recording_generate(n, **options):
        calls.append(options["batch_size"])
        return generate(n, **options)

    monkeypatch.setattr(imputer.module, "generate", recording_generate)
    monkeypatch.setattr(imputer_module, "SAMPLING_TOKENS", 5 * 2 * WINDOW + 7)
    values = np.where(np.random.default_rng(0).random((3, 2, WINDOW)) < 0.3, np.nan, 1.0)
    imputer.sample_windows(values, n_samples=2, seed=4, steps=2)
    monkeypatch.setattr(imputer_module, "SAMPLING_TOKENS", 1)
    imputer.sample_windows(values, n_samples=2, seed=4, steps=2)
    assert calls == [5, 1]


def test_only_windows_that_own_a_gap_are_drawn(imputer, monkeypatch):
    """A forecast of a long, fully observed history draws the window of the future only; a frame without
    gaps draws nothing."""
    drawn = []
    sample_windows = imputer.sample_windows

    def recording(values, *args, **options):
        drawn.append(len(values))
        return sample_windows(values, *args, **options)

    monkeypatch.setattr(imputer, "sample_windows", recording)
    history = gappy(400, seed=3).interpolate().bfill()
    result = imputer.forecast(history, horizon=4, stride=WINDOW // 2, **FAST)
    assert drawn == [1], "the last window owns the 4 future steps; the other 50 are skipped"
    assert result.filled.notna().all().all()
    assert result.filled.iloc[:400].to_numpy().tobytes() == history.to_numpy().tobytes()
    drawn.clear()
    assert imputer.impute(history, **FAST).filled.to_numpy().tobytes() == history.to_numpy().tobytes()
    assert drawn == [], "nothing to fill, nothing drawn"


class InterpolatingDenoiser:
    """A stand-in for the denoiser with a known answer: x0_hat is the linear interpolation, in each
    window's time positions, of the values given as conditioning (which come centred on ``offset``)."""

    def __call__(self, x_t, t, cond_values, cond_mask, time_pos, offset):
        out = offset.expand_as(x_t).clone()
        for b, k in np.ndindex(*x_t.shape[:2]):
            known = cond_mask[b, k] > 0
            if known.any():
                pos = time_pos[b].numpy()
                values = np.interp(pos, pos[known.numpy()], cond_values[b, k][known].numpy())
                out[b, k] += torch.as_tensor(values)
        return out


def test_windows_positions_and_stitching_reproduce_a_known_denoiser(imputer, monkeypatch):
    """With a denoiser that interpolates, the imputer must return the interpolation of the whole
    series: any error in normalising, windowing, time positions, sorting or stitching shows."""
    monkeypatch.setattr(imputer.module, "denoiser", InterpolatingDenoiser)
    rng = np.random.default_rng(0)
    n = 70
    stamps = pd.Timestamp("2021-01-01") + pd.to_timedelta(np.cumsum(rng.integers(1, 4, n)), "h")
    hours = (stamps - stamps[0]).total_seconds().to_numpy() / 3600
    truth = pd.DataFrame({"x0": np.sin(hours / 5), "x1": 10 + np.cos(hours / 7)}, index=stamps)
    frame = truth.copy()
    frame.iloc[1::3, 0] = np.nan
    frame.iloc[2::4, 1] = np.nan
    shuffled = frame.sample(frac=1.0, random_state=1)
    result = imputer.impute({"a": shuffled, "b": frame.iloc[:20]}, n_samples=2, steps=3)
    for name, part in (("a", shuffled), ("b", frame.iloc[:20])):
        filled = result[name].filled
        for column in ("x0", "x1"):
            known = part[column].notna().to_numpy()
            times = (part.index - stamps[0]).total_seconds().to_numpy()
            expected = np.interp(times, np.sort(times[known]), part[column][known].to_numpy()[np.argsort(times[known])])
            np.testing.assert_allclose(filled[column].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(result["a"].samples, axis=0).max() < 1e-5  # deterministic denoiser: equal samples


def test_stitching_picks_central_windows():
    from toolkit.domains.timeseries import Windows
    from toolkit.impute.stitching import most_central

    windows = Windows(
        values=np.zeros((3, 1, 8)),
        time_pos=np.zeros((3, 8)),
        series_index=np.array([0, 0, 0]),
        start=np.array([0, 4, 6]),
        length=np.array([8, 8, 8]),
    )
    owner, offset = most_central(windows, 0, 14, 8)
    assert owner.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert offset.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 3, 4, 5, 6, 7]


# ----------------------------------------------------------------------------- several series


def test_dict_of_frames_and_series_column_agree(imputer):
    frames = {name: f.assign(site=name).reset_index() for name, f in {"a": gappy(20, 5), "b": gappy(33, 6)}.items()}
    separate = imputer.impute(frames, time_column="time", series_column="site", **FAST)
    assert set(separate) == {"a", "b"}
    long = pd.concat(frames.values(), ignore_index=True)
    together = imputer.impute(long, time_column="time", series_column="site", **FAST)
    assert list(together.filled.columns) == ["time", "x0", "x1", "site"]
    np.testing.assert_array_equal(
        together.filled[["x0", "x1"]].to_numpy(),
        np.concatenate([separate["a"].filled[["x0", "x1"]].to_numpy(), separate["b"].filled[["x0", "x1"]].to_numpy()]),
    )


def test_a_frame_draws_the_same_wherever_it_sits(imputer):
    """Seeds come from (seed, sample, series name, window start), never from a frame's place in the
    call: a frame alone and second in a dict get the same draws; named series likewise."""
    first, second = gappy(20, seed=5), gappy(33, seed=6)
    alone = imputer.impute(second, seed=2, **FAST).samples
    np.testing.assert_array_equal(imputer.impute({"a": first, "b": second}, seed=2, **FAST)["b"].samples, alone)
    future = imputer.forecast(second, 3, seed=2, **FAST).samples
    np.testing.assert_array_equal(imputer.forecast({"a": first, "b": second}, 3, seed=2, **FAST)["b"].samples, future)
    named = {name: f.assign(site=name) for name, f in {"a": first, "b": second}.items()}
    long_b = imputer.impute(pd.concat(named.values()).reset_index(), time_column="time", series_column="site", **FAST)
    b_only = imputer.impute(named["b"].reset_index(), time_column="time", series_column="site", **FAST)
    np.testing.assert_array_equal(long_b.samples[:, len(first) :], b_only.samples)


def test_window_seeds_of_a_frame_without_names_are_the_earlier_ones():
    """A frame of one series keeps the seeds of earlier versions (series number 0); names hash."""
    old = int(np.random.SeedSequence([3, 1, 0, 8]).generate_state(1)[0])
    assert window_seed(3, 1, None, 8) == window_seed(3, 1, 0, 8) == old
    assert len({window_seed(3, 1, name, 8) for name in (None, "a", "b", "0", 1)}) == 5


def test_fit_window_keyword_and_config_key_must_agree(training_frames):
    with pytest.raises(ValueError, match=r"window=16 and the config key domain.window=32 disagree"):
        Imputer.fit(training_frames, window=16, max_steps=1, **{"domain.window": 32})
    with pytest.raises(ValueError, match=r"stride=4 and the config key domain__stride=2 disagree"):
        Imputer.fit(training_frames, stride=4, max_steps=1, domain__stride=2)
    overrides = {"domain.window": 32}
    assert keyword_or_config("window", None, overrides, 64) == 32 and overrides == {}
    assert keyword_or_config("window", 32, {"domain__window": 32}, 64) == 32
    assert keyword_or_config("window", None, {}, 64) == 64


# ----------------------------------------------------------------------------- edge cases


def test_all_missing_and_constant_columns_are_filled(imputer):
    frame = gappy(24)
    frame["x1"] = np.nan
    result = imputer.impute(frame, **FAST)
    assert result.filled["x1"].notna().all() and result.filled["x1"].dtype == np.float64
    as_objects = gappy(24).assign(x1=[None] * 24)
    assert as_objects["x1"].dtype == object
    assert imputer.impute(as_objects, **FAST).filled["x1"].dtype == np.float64
    constant = gappy(24).assign(x0=5.0)
    constant.iloc[3, 0] = np.nan
    assert imputer.impute(constant, **FAST).filled["x0"].notna().all()


def test_series_shorter_than_a_window(imputer):
    frame = gappy(5)
    frame.iloc[2] = np.nan
    result = imputer.impute(frame, **FAST)
    assert result.filled.shape == (5, 2) and result.filled.notna().all().all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(x2=1.0), "not in the model"),
        (lambda f: f.drop(columns=["x1"]), "missing"),
        (lambda f: f.assign(x1="high"), "not numeric"),
        (lambda f: f.assign(x1=f["x1"].astype(str)), "not numeric|stored as text"),
        (lambda f: f.assign(x1=True), "boolean"),
        (lambda f: f.assign(x1=np.inf), "column 'x1' holds inf at row Timestamp.'2021-03-01 00:00:00'.*infinite"),
        (lambda f: f.assign(x0=1e300), "column 'x0' holds 1e.300 at row .*too large"),
        (lambda f: f.assign(x1=-1e39), "column 'x1' holds -1e.39"),
        (lambda f: f.iloc[[0, 1, 1, 2]], "duplicate time stamps"),
        (lambda f: f.iloc[:0], "empty"),
    ],
)
def test_bad_input_is_a_clear_error(imputer, change, message):
    with pytest.raises(ValueError, match=message):
        imputer.impute(change(gappy(10)), **FAST)


def test_values_that_overflow_after_normalisation_name_their_column(imputer, monkeypatch):
    monkeypatch.setattr(imputer.domain.normalizer, "std", np.array([1.0, 1e-6]))
    with pytest.raises(ValueError, match="column 'x1' holds values too far from the training data"):
        imputer.impute(gappy(10).assign(x1=1e36), **FAST)


def test_numbers_as_text_are_rejected(imputer):
    frame = gappy(10).astype(object).astype(str)
    with pytest.raises(ValueError, match="stored as text|not numeric"):
        imputer.impute(frame.replace("nan", None), **FAST)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"quantiles": (0.5, 1.5)}, "quantiles"),
        ({"sampler": "magic"}, "unknown sampler"),
        ({"seed": -1}, "seed"),
        ({"stride": 0}, "stride"),
    ],
)
def test_bad_options_are_clear_errors(imputer, options, message):
    with pytest.raises(ValueError, match=message):
        imputer.impute(gappy(10), **{**FAST, **options})


def test_wrong_input_types(imputer):
    with pytest.raises(TypeError, match="DataFrame"):
        imputer.impute(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="not DataFrames"):
        imputer.impute({"a": np.zeros(3)})


def test_non_timeseries_models_are_refused():
    with pytest.raises(ValueError, match="time-series model"):
        Imputer(SimpleNamespace(domain=SimpleNamespace(name="image")))


# ----------------------------------------------------------------------------- forecasting


def test_forecast_extends_a_datetime_index_at_its_frequency(imputer):
    frame = gappy(30).assign(x0=lambda f: f["x0"].fillna(1.0).round().astype("int64"))
    result = imputer.forecast(frame, horizon=5, **FAST)
    expected = pd.date_range(frame.index[0], periods=35, freq="h", name="time")
    assert result.filled.index.equals(expected)
    assert str(result.filled["x0"].dtype) == "Int64" and result.filled.notna().all().all()
    np.testing.assert_array_equal(result.filled["x0"].to_numpy()[:30], frame["x0"].to_numpy())
    history = frame["x1"].notna().to_numpy()
    assert result.filled["x1"].to_numpy()[:30][history].tobytes() == frame["x1"].to_numpy()[history].tobytes()


def test_forecast_other_time_layouts():
    numeric = pd.DataFrame({"t": [0.0, 2.0, 4.0], "x0": [1.0, 2.0, 3.0], "x1": [1.0, np.nan, 3.0]})
    assert extend_frame(numeric, 2, "t", None)["t"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    ranged = numeric.drop(columns="t")
    assert extend_frame(ranged, 2, None, None).index.tolist() == [0, 1, 2, 3, 4]
    text_dates = numeric.assign(t=["2020-01-01", "2020-02-01", "2020-03-01"])
    future = extend_frame(text_dates, 2, "t", None)["t"]
    assert list(future.dt.strftime("%Y-%m-%d"))[-2:] == ["2020-04-01", "2020-05-01"]
    long = pd.concat([numeric.assign(site="a"), numeric.assign(site="b", t=numeric["t"] + 1)], ignore_index=True)
    extended = extend_frame(long, 1, "t", "site")
    assert extended.groupby("site")["t"].max().to_dict() == {"a": 6.0, "b": 7.0}
    periods = pd.DataFrame({"x0": [1.0, 2.0]}, index=pd.period_range("2020Q1", periods=2, freq="Q"))
    assert str(extend_frame(periods, 1, None, None).index[-1]) == "2020Q3"
    with pytest.raises(ValueError, match="cannot use time stamps of type str"):
        extend_frame(numeric.set_index(pd.Index(["a", "b", "c"])), 1, None, None)


def daily_with_a_missing_day(n: int = 20) -> pd.DataFrame:
    """Daily rows from 2020-03-01 with 2020-03-10 absent, values near the training data's."""
    days = pd.date_range("2020-03-01", periods=n, freq="D").delete(9)
    rng = np.random.default_rng(3)
    return pd.DataFrame({"date": days, "x0": rng.normal(size=n - 1), "x1": 10 + rng.normal(size=n - 1)})


def test_forecast_of_the_issue_read_csv_daily_series_missing_a_day(imputer, tmp_path):
    """pandas 3's read_csv parses dates as datetime64[us]; with one day missing the future stamps
    must still be the next days (they were 86.4 s apart when microseconds were read as nanoseconds)."""
    daily_with_a_missing_day().to_csv(tmp_path / "daily.csv", index=False)
    frame = pd.read_csv(tmp_path / "daily.csv", parse_dates=["date"])
    assert str(frame["date"].dtype) == "datetime64[us]"
    with pytest.warns(UserWarning, match="1 time stamps are missing from its regular grid"):
        result = imputer.forecast(frame, horizon=3, time_column="date", **FAST)
    future = result.filled["date"].iloc[-3:]
    assert list(future) == list(pd.date_range("2020-03-21", periods=3, freq="D"))
    assert len(result.filled) == 22 and result.filled[["x0", "x1"]].notna().all().all()


@pytest.mark.parametrize("unit", ["ns", "us", "ms", "s"])
@pytest.mark.parametrize("tz", [None, "America/New_York"])
def test_forecast_time_stamps_at_every_resolution_and_time_zone(imputer, unit, tz):
    frame = daily_with_a_missing_day().set_index("date")
    frame.index = frame.index.as_unit(unit).tz_localize(tz)  # spans the 2020-03-08 daylight-saving change
    with pytest.warns(UserWarning, match="missing from its regular grid"):
        result = imputer.forecast(frame, horizon=3, **FAST)
    expected = pd.date_range("2020-03-21", periods=3, freq="D", unit=unit, tz=tz)
    assert result.filled.index[-3:].equals(expected) and result.filled.index.dtype == expected.dtype
    assert result.filled.index[:19].equals(frame.index) and result.filled.notna().all().all()


def test_forecast_with_a_period_index_and_numeric_time_stamps(imputer):
    quarters = pd.period_range("2019Q1", periods=10, freq="Q").delete(4)
    values = daily_with_a_missing_day(10)[["x0", "x1"]]
    with pytest.warns(UserWarning, match="1 time stamps are missing"):
        result = imputer.forecast(values.set_index(quarters), horizon=2, **FAST)
    assert [str(p) for p in result.filled.index[-3:]] == ["2021Q2", "2021Q3", "2021Q4"]
    hours = values.assign(hour=[0, 3, 6, 9, 12, 18, 21, 24, 27])
    with pytest.warns(UserWarning, match="1 time stamps are missing"):
        result = imputer.forecast(hours, horizon=2, time_column="hour", **FAST)
    assert result.filled["hour"].tolist()[-3:] == [27, 30, 33] and result.filled["hour"].dtype == np.int64


def test_forecast_of_irregular_stamps_is_an_error(imputer):
    frame = daily_with_a_missing_day(10)
    frame.loc[4, "date"] += pd.Timedelta("5h")
    with pytest.raises(ValueError, match="not on one regular grid.*resample"):
        imputer.forecast(frame, horizon=2, time_column="date", **FAST)


def test_forecast_horizon_must_be_shorter_than_the_window(imputer):
    with pytest.raises(ValueError, match="horizon"):
        imputer.forecast(gappy(30), horizon=WINDOW)


# ----------------------------------------------------------------------------- checkpoints and CLI


def test_save_load_roundtrip_is_atomic_and_loadable_by_the_module_loader(imputer, tmp_path):
    path = imputer.save(tmp_path / "models" / "imputer.ckpt")
    assert [p.name for p in path.parent.iterdir()] == ["imputer.ckpt"]
    loaded = Imputer.load(path)
    frame = gappy(20)
    assert np.array_equal(loaded.impute(frame, **FAST).samples, imputer.impute(frame, **FAST).samples)
    assert load_module(path).domain.columns == imputer.columns
    with pytest.raises(FileNotFoundError):
        Imputer.load(tmp_path / "missing.ckpt")


def test_fit_rejects_unknown_config_keys_and_missing_files(training_frames, tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'optim.learning_rate'"):
        Imputer.fit(training_frames, max_steps=2, run_dir=tmp_path, optim__learning_rate=1.0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Imputer.fit(tmp_path / "missing.csv", max_steps=2, run_dir=tmp_path)
    assert not list(tmp_path.iterdir()), "nothing is written before the input is checked"


def hydra_csv_overrides(csv) -> list[str]:
    """`python -m toolkit.train` arguments for a tiny time-series run on a CSV file."""
    return [
        "domain=timeseries",
        "domain.source=path",
        f"domain.path={csv}",
        "domain.time_column=date",
        f"domain.window={WINDOW}",
        *HYDRA_TINY_NET,
        "trainer.max_steps=4",
        "ema.start_step=0",
        "trainer.enable_progress_bar=false",
        "final_samples.n=2",
    ]


def test_hydra_training_on_a_csv_gives_a_checkpoint_the_imputer_loads(training_frames, tmp_path):
    csv = tmp_path / "train.csv"
    training_frames["s0"].rename_axis("date").reset_index().to_csv(csv, index=False)
    overrides = hydra_csv_overrides(csv)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    last = train(cfg, tmp_path / "run")
    imputer = Imputer.load(last)
    assert imputer.columns == ["x0", "x1"] and imputer.time_column == "date"
    frame = pd.read_csv(csv).head(20)
    frame.loc[3:6, "x1"] = np.nan
    result = imputer.impute(frame, **FAST)  # the model's time column is found in the frame
    assert list(result.filled.columns) == ["date", "x0", "x1"] and result.filled.notna().all().all()


def test_cli_writes_filled_values_and_quantile_columns(imputer, tmp_path):
    model = imputer.save(tmp_path / "model.ckpt")
    frame = gappy(30).reset_index()
    frame.to_csv(tmp_path / "in.csv", index=False)
    args = [
        str(tmp_path / "in.csv"),
        "--model",
        str(model),
        "--n-samples",
        "5",
        "--steps",
        "2",
        "--seed",
        "1",
    ]
    main([*args, "--out", str(tmp_path / "out.csv"), "--quantiles", "0.05,0.95"])
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["time", "x0", "x1", "x0_q05", "x1_q05", "x0_q95", "x1_q95"]
    assert out[["x0", "x1"]].notna().all().all()
    observed = frame[["x0", "x1"]].notna().to_numpy()
    assert out[["x0", "x1"]].to_numpy()[observed].tobytes() == frame[["x0", "x1"]].to_numpy()[observed].tobytes()
    assert (out["x1_q05"] <= out["x1"]).all() and (out["x1"] <= out["x1_q95"]).all()
    main([*args, "--out", str(tmp_path / "again.csv"), "--quantiles", "0.05,0.95"])
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "again.csv").read_bytes()
    main([*args, "--out", str(tmp_path / "future.csv"), "--horizon", "3"])
    assert len(pd.read_csv(tmp_path / "future.csv")) == 33


@pytest.fixture(scope="module")
def cli_files(imputer, tmp_path_factory) -> Path:
    """A model, good input and each kind of bad model file and input, in one folder."""
    folder = tmp_path_factory.mktemp("cli")
    imputer.save(folder / "model.ckpt")
    save_untrained_checkpoint(folder / "image.ckpt", ["domain=image", "domain.net.base_channels=8"])
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "text.ckpt").write_text("not a checkpoint\n")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "semicolons.csv").write_text("time;x0;x1\n2021-03-01 00:00;1,5;10,2\n2021-03-01 01:00;;10,4\n")
    good = gappy(30).reset_index()
    good.to_csv(folder / "in.csv", index=False)
    good.assign(x0=good["x0"].where(good.index != 4, 1e300)).to_csv(folder / "huge.csv", index=False)
    good.assign(extra=1.0, other=2.0).to_csv(folder / "columns.csv", index=False)
    good.assign(time=good["time"].where(good.index != 5, good["time"][5] + pd.Timedelta("17min"))).to_csv(
        folder / "irregular.csv", index=False
    )
    return folder


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("in.csv --model missing.ckpt", "checkpoint .*missing.ckpt does not exist"),
        ("in.csv --model empty.ckpt", "checkpoint .*empty.ckpt is an empty file"),
        ("in.csv --model text.ckpt", ".*text.ckpt is not a PyTorch checkpoint"),
        ("in.csv --model .", "is a folder, not a file; pass the .ckpt inside it"),
        ("in.csv --model image.ckpt", "image.ckpt: the Imputer needs a time-series model"),
        ("missing.csv --model model.ckpt", "time-series file .*missing.csv does not exist"),
        ("empty.csv --model model.ckpt", "cannot read .*empty.csv as CSV"),
        ("semicolons.csv --model model.ckpt", r"semicolons.csv looks ';'-separated.*sep=';', decimal=','"),
        ("huge.csv --model model.ckpt", r"huge.csv: .*column 'x0' holds 1e\+300 at row 4"),
        ("columns.csv --model model.ckpt", "columns.csv: .*differ from the model's"),
        ("irregular.csv --model model.ckpt", "irregular.csv: .*not on one regular grid.*resample"),
        ("in.csv --model model.ckpt --horizon 99", "horizon must be an int in"),
        ("in.csv --model model.ckpt --n-samples 0", "argument --n-samples: expected an integer >= 1, got '0'"),
        ("in.csv --model model.ckpt --steps two", "argument --steps: expected an integer >= 1"),
        ("in.csv --model model.ckpt --quantiles x", "argument --quantiles: expected comma-separated numbers"),
        ("in.csv --model model.ckpt --sampler magic", "unknown sampler 'magic'"),
        ("in.csv --model model.ckpt --out out.txt", "--out must end in .csv or .parquet"),
        ("in.csv --model model.ckpt --out in.csv", "--out .*in.csv is the input file"),
        ("in.csv --model model.ckpt --colour red", "unrecognized arguments: --colour red"),
    ],
)
def test_cli_errors_are_one_line_exit_2_and_write_nothing(cli_files, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(cli_files)
    before = sorted(p.name for p in cli_files.iterdir())
    argv = arguments.split()
    if "--out" not in argv:
        argv += ["--out", "out.csv"]
    with pytest.raises(UsageError) as exit_info:  # toolkit.cli.fail, as train and sample
        main([*argv, "--n-samples", "2", "--steps", "1"] if "--n-samples" not in argv else argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert sorted(p.name for p in cli_files.iterdir()) == before, "nothing is written"


def test_cli_forecast_of_a_daily_csv_missing_a_day_warns_and_continues_the_days(cli_files, tmp_path, capsys):
    daily_with_a_missing_day().to_csv(tmp_path / "daily.csv", index=False)
    main(
        [str(tmp_path / "daily.csv"), "--model", str(cli_files / "model.ckpt"), "--out", str(tmp_path / "f.csv")]
        + ["--horizon", "3", "--n-samples", "3", "--steps", "2"]
    )
    err = capsys.readouterr().err
    assert err.startswith("warning: series") and "1 time stamps are missing from its regular grid" in err
    out = pd.read_csv(tmp_path / "f.csv")
    assert out["date"].tolist()[-4:] == ["2020-03-20", "2020-03-21", "2020-03-22", "2020-03-23"]
    assert len(out) == 22 and out[["x0", "x1"]].notna().all().all()


def test_a_failed_write_leaves_no_file_and_no_new_folder(tmp_path):
    mixed = pd.DataFrame({"x": [1, "a"]})  # Parquet refuses a column of ints and text
    with pytest.raises((ValueError, TypeError)):
        write_frame(mixed, tmp_path / "new" / "deeper" / "out.parquet")
    assert list(tmp_path.iterdir()) == []
    write_frame(mixed, tmp_path / "new" / "out.csv")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["out.csv"]


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        assert action.help, f"{action.dest} has no help"
        for flag in action.option_strings:
            assert flag in text


def test_quantile_suffixes():
    assert [quantile_suffix(q) for q in (0.05, 0.5, 0.95, 0.025, 1.0)] == [
        "q05",
        "q50",
        "q95",
        "q02p5",
        "q100",
    ]


@pytest.mark.slow
def test_command_lines_train_then_impute(training_frames, tmp_path):
    csv = tmp_path / "train.csv"
    training_frames["s0"].rename_axis("date").reset_index().to_csv(csv, index=False)
    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.train",
            *hydra_csv_overrides(csv),
            f"hydra.run.dir={run}",
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    gaps = pd.read_csv(csv).head(25)
    gaps.loc[2:9, "x0"] = np.nan
    gaps.to_csv(tmp_path / "gaps.csv", index=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.impute",
            str(tmp_path / "gaps.csv"),
            "--model",
            str(run / "checkpoints" / "last.ckpt"),
            "--out",
            str(tmp_path / "filled.csv"),
            "--n-samples",
            "3",
            "--steps",
            "2",
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    filled = pd.read_csv(tmp_path / "filled.csv")
    assert filled["x0"].notna().all() and list(filled.columns) == ["date", "x0", "x1"]
