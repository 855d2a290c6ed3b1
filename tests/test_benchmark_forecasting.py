"""The pieces of benchmarks/forecasting.py: origins, seasonal naive, ETS, the scores and coverage, and
one --quick run end to end (on an untrained checkpoint, to stay fast) so that the script cannot rot."""

import numpy as np
import pandas as pd
import pytest
from conftest import load_benchmark, save_untrained_checkpoint

bench = load_benchmark("forecasting")


def task_of(truth: np.ndarray, std=(1.0,)) -> "bench.Task":
    return bench.Task(pd.DataFrame(), 0, list(range(len(truth))), truth.shape[-1], truth, np.asarray(std))


def test_origins_lie_in_the_held_out_tail_with_their_whole_horizon():
    rows, horizon = 203, 8
    cut = bench.split_point(rows)
    assert cut == 162  # as split_by_time cuts 203 quarters at val_fraction 0.2
    origins = bench.spread_origins(cut, rows, horizon, 24)
    assert origins[0] == cut and origins[-1] == rows - horizon
    assert len(origins) == 24 and origins == sorted(set(origins))
    assert bench.spread_origins(cut, rows, horizon, 100) == list(range(cut, rows - horizon + 1))
    with pytest.raises(ValueError, match="shorter than the horizon"):
        bench.spread_origins(cut, rows, 42, 3)


def test_seasonal_naive_is_exact_on_a_purely_seasonal_series():
    season, horizon = 12, 30  # beyond one season it goes back whole seasons
    t = np.arange(240)
    pattern = np.random.default_rng(0).normal(size=season)
    series = np.stack([pattern[t % season], 5 + 2 * pattern[(t + 3) % season]], axis=1)
    for origin in (24, 100, 210):
        forecast = bench.seasonal_naive(series[:origin], horizon, season)
        np.testing.assert_array_equal(forecast, series[origin : origin + horizon].T)


def test_a_perfect_forecast_scores_zero_and_covers_everything():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(5, 2, 4))
    truth[0, 1, 2] = np.nan  # a missing future value is not scored
    task = task_of(truth, std=(2.0, 0.5))
    result = bench.evaluate("perfect", task, np.nan_to_num(truth)[None], 0.0, probabilistic=True)
    for s in [*result.per_horizon, result.overall]:
        assert s.mae == s.crps == 0.0
    assert result.coverage == [1.0] * 4 and result.overall_coverage == 1.0


def test_a_constant_shift_scores_its_size_in_training_std_units():
    truth = np.random.default_rng(2).normal(size=(6, 2, 3))
    std = np.array([2.0, 0.5])
    shifted = truth + 0.3 * std[None, :, None]
    result = bench.evaluate("shifted", task_of(truth, std), shifted[None], 0.0, probabilistic=True)
    for s in [*result.per_horizon, result.overall]:
        assert s.mae == pytest.approx(0.3) and s.crps == pytest.approx(0.3)
    assert result.overall_coverage == 0.0  # a point band that misses every value


def test_coverage_counts_values_inside_the_band():
    truth = np.zeros((1, 1, 4))
    scored = np.ones(truth.shape, dtype=bool)
    wide = np.linspace(-1, 1, 101)[:, None, None, None] * np.ones((1, 1, 1, 4))
    assert bench.coverage(truth, scored, wide) == 1.0
    assert bench.coverage(truth + 2, scored, wide) == 0.0
    half = truth.copy()
    half[..., :2] = 5.0
    assert bench.coverage(half, scored, wide) == 0.5
    draws = np.random.default_rng(3).normal(size=(2000, 1, 1, 400))
    calibrated = np.random.default_rng(4).normal(size=(1, 1, 400))
    assert bench.coverage(calibrated, np.ones(calibrated.shape, bool), draws) == pytest.approx(0.9, abs=0.05)


def test_ets_paths_follow_a_clean_seasonal_trend():
    season, horizon = 4, 8
    t = np.arange(120, dtype=float)
    history = np.stack([0.5 * t + np.tile([3.0, -1.0, 0.0, -2.0], 30)], axis=1)
    paths = bench.ets_paths(history + np.random.default_rng(5).normal(0, 0.05, history.shape), horizon, season, 50, 0)
    assert paths.shape == (50, 1, horizon)
    future = np.arange(120, 120 + horizon)
    expected = 0.5 * future + np.tile([3.0, -1.0, 0.0, -2.0], 2)
    np.testing.assert_allclose(np.median(paths, axis=0)[0], expected, atol=1.0)


def test_quick_run_writes_the_results_file(tmp_path):
    ckpt = save_untrained_checkpoint(
        tmp_path / "untrained.ckpt",
        ["domain=timeseries", "domain.source=macrodata", "domain.window=16"]
        + [f"{key}={value}" for key, value in bench.QUICK_NET.items()],
    )
    out = tmp_path / "forecasting.md"
    bench.main(["--quick", "--sources", "macrodata", "--ckpt", f"macrodata={ckpt}", "--out", str(out)])
    text = out.read_text()
    for part in (
        "# Time-series forecasting",
        "- Reproduce: `python benchmarks/forecasting.py --quick",
        "Wall time",
        "Load average",
        "## macrodata",
        "| **mean** |",
        "ours 5-95%",
        "Findings:",
        "CRPS against ETS",
        "CRPS against seasonal naive (4)",
    ):
        assert part in text
    assert text.count("\n| ") == 2 + 8 + 1  # header, rule, horizons 1-8 and the mean
