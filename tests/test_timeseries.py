"""Time-series imputation domain: the CSDI network, reading and validation, windows, the
normaliser, training masks, embedded data and the files the domain writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from toolkit.core import sampler, schedule
from toolkit.core.denoiser import Denoiser, x0_from
from toolkit.core.mixture import GaussianMixture
from toolkit.domains.timeseries import (
    Normalizer,
    OffsetDenoiser,
    TimeSeriesDomain,
    TrainingMasker,
    block_hidden,
    historical_hidden,
    interest_inflation_frame,
    make_windows,
    random_hidden,
    read_series,
    split_by_time,
    synthetic_frames,
    time_grid,
    to_model_space,
    window_offset,
    window_starts,
)
from toolkit.nets.csdi import CSDINet, EncoderLayer

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "domain" / "timeseries.yaml"
SMALL_NET = {"_target_": "toolkit.nets.csdi.CSDINet", "channels": 16, "layers": 2, "heads": 2}


def small_net(num_features: int, randomise_output: bool = True) -> CSDINet:
    torch.manual_seed(0)
    net = CSDINet(num_features, channels=16, layers=2, heads=2, time_emb_dim=16, feature_emb_dim=4).eval()
    if randomise_output:
        torch.nn.init.normal_(net.output[-1].weight, std=0.5)
    return net


def frame(n: int = 10, columns=("a", "b"), start: str = "2021-01-01", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=n, freq="D", name="date")
    return pd.DataFrame(rng.normal(size=(n, len(columns))), index=index, columns=list(columns))


# ----------------------------------------------------------------------------- network


@pytest.mark.parametrize(("k", "steps"), [(1, 64), (3, 17)])
def test_net_output_shape_for_any_length(k, steps):
    net = small_net(k)
    x = torch.randn(2, k, steps)
    mask = (torch.rand(2, k, steps) > 0.5).float()
    for time_pos in (None, torch.arange(steps) * 0.5, torch.rand(2, steps) * 100):
        assert net(x, torch.rand(2), x * mask, mask, time_pos).shape == (2, k, steps)
    assert net(x, torch.tensor(0.3)).shape == (2, k, steps)


def test_net_output_projection_starts_at_zero():
    net = CSDINet(3, channels=16, layers=2, heads=2)
    x = torch.randn(4, 3, 20)
    assert torch.equal(net(x, torch.rand(4), x, torch.ones_like(x)), torch.zeros(4, 3, 20))


def test_net_is_batch_independent():
    net = small_net(3)
    x, t = torch.randn(5, 3, 24), torch.rand(5)
    mask = (torch.rand(5, 3, 24) > 0.4).float()
    time_pos = torch.rand(5, 24).cumsum(1)
    with torch.no_grad():
        together = net(x, t, x * mask, mask, time_pos)
        alone = torch.cat(
            [
                net(
                    x[i : i + 1],
                    t[i : i + 1],
                    x[i : i + 1] * mask[i : i + 1],
                    mask[i : i + 1],
                    time_pos[i : i + 1],
                )
                for i in range(5)
            ]
        )
    assert together.abs().max() > 0
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_net_reads_known_values_from_conditioning_only():
    net = small_net(2)
    x, t = torch.randn(1, 2, 16), torch.rand(1)
    mask = torch.zeros(1, 2, 16)
    mask[..., :8] = 1
    with torch.no_grad():
        base = net(x, t, x * mask, mask)
        noisy_known_changed = net(x + 5 * mask, t, x * mask, mask)
        values_changed = net(x, t, (x + 1) * mask, mask)
        time_changed = net(x, t, x * mask, mask, torch.arange(16) * 3.0)
    torch.testing.assert_close(base, noisy_known_changed)
    assert not torch.allclose(base, values_changed)
    assert not torch.allclose(base, time_changed)


def test_net_rejects_labels_wrong_features_and_bad_heads():
    net = small_net(2)
    with pytest.raises(ValueError, match="labels"):
        net(torch.randn(1, 2, 8), torch.rand(1), label=torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="2 features"):
        net(torch.randn(1, 3, 8), torch.rand(1))
    with pytest.raises(ValueError, match="divisible"):
        CSDINet(2, channels=10, heads=4)


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_encoder_layer_is_torchs_pre_norm_layer(dropout):
    """Same seed, same parameters as nn.TransformerEncoderLayer; either state dict loads into the other,
    and the outputs and gradients agree (dropout off in eval)."""
    torch.manual_seed(3)
    reference = torch.nn.TransformerEncoderLayer(
        16, 2, 24, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    torch.manual_seed(3)
    lean = EncoderLayer(16, 2, 24, dropout)
    for (name, ours), (ref_name, theirs) in zip(lean.state_dict().items(), reference.state_dict().items(), strict=True):
        assert name == ref_name and torch.equal(ours, theirs)
    reference.load_state_dict(lean.state_dict())
    x = torch.randn(5, 7, 16, requires_grad=True)
    lean.eval(), reference.eval()
    (grad_ours,) = torch.autograd.grad(lean(x).square().sum(), x)
    (grad_ref,) = torch.autograd.grad(reference(x).square().sum(), x)
    torch.testing.assert_close(lean(x), reference(x))
    torch.testing.assert_close(grad_ours, grad_ref)
    if dropout:
        lean.train()
        assert not torch.equal(lean(x), lean(x))


def test_read_csv_with_time_column(tmp_path):
    df = frame(6).reset_index()
    df.to_csv(tmp_path / "a.csv", index=False)
    data = read_series(tmp_path / "a.csv", time_column="date")
    (s,) = data.series
    assert data.columns == ["a", "b"] and s.name == "a"
    assert isinstance(s.index, pd.DatetimeIndex)
    np.testing.assert_allclose(s.values, df[["a", "b"]].to_numpy())
    np.testing.assert_allclose(s.positions, np.arange(6))


def test_read_parquet_with_datetime_index_and_nan(tmp_path):
    df = frame(8)
    df.iloc[2, 0] = np.nan
    df.to_parquet(tmp_path / "a.parquet")
    (s,) = read_series(tmp_path / "a.parquet").series
    assert s.index.equals(df.index)
    assert np.isnan(s.values[2, 0]) and np.isfinite(s.values).sum() == 15


def test_read_dataframe_without_time_uses_row_order():
    df = pd.DataFrame({"a": [1.0, 2.0, np.nan], "b": [1, 2, 3]})
    (s,) = read_series(df).series
    np.testing.assert_allclose(s.positions, [0, 1, 2])
    assert s.values.dtype == float


def test_read_dict_of_frames_of_different_lengths_and_list_of_paths(tmp_path):
    frames = {"x": frame(5), "y": frame(9, seed=1)}
    data = read_series(frames)
    assert [s.name for s in data.series] == ["x", "y"]
    assert [len(s) for s in data.series] == [5, 9]
    for name, f in frames.items():
        f.to_csv(tmp_path / f"{name}.csv")
    from_paths = read_series([tmp_path / "x.csv", tmp_path / "y.csv"], time_column="date")
    from_folder = read_series(tmp_path, time_column="date")
    for loaded in (from_paths, from_folder):
        assert [s.name for s in loaded.series] == ["x", "y"]
        np.testing.assert_allclose(loaded.series[1].values, frames["y"].to_numpy())


def test_read_series_id_column_splits_series_in_order_of_appearance(tmp_path):
    long = pd.concat([frame(4).assign(site="north"), frame(7, seed=2).assign(site="south")]).reset_index()
    long.to_csv(tmp_path / "long.csv", index=False)
    data = read_series(tmp_path / "long.csv", time_column="date", series_column="site")
    assert [s.name for s in data.series] == ["north", "south"]
    assert [len(s) for s in data.series] == [4, 7]
    assert data.columns == ["a", "b"]


def test_stamps_missing_from_a_regular_grid_become_gaps_with_a_warning():
    index = pd.to_datetime(["2021-01-01", "2021-01-02", "2021-01-04", "2021-01-05"])
    with pytest.warns(UserWarning, match="1 time stamps are missing from its regular grid"):
        (s,) = read_series(pd.DataFrame({"a": [1.0, 2, 3, 4]}, index=index)).series
    assert s.index.equals(pd.date_range("2021-01-01", periods=5, freq="D"))
    np.testing.assert_array_equal(s.values[:, 0], [1.0, 2.0, np.nan, 3.0, 4.0])
    np.testing.assert_allclose(s.positions, np.arange(5))


@pytest.mark.parametrize("unit", ["ns", "us", "ms", "s"])
@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
def test_time_grid_at_every_resolution_and_time_zone(unit, tz):
    """A daily series over a daylight-saving change with one day missing: calendar days at any unit."""
    days = pd.date_range("2021-03-20", periods=15, freq="D", unit=unit, tz=tz)
    grid = time_grid(days.delete(6))
    assert grid.missing == 1 and grid.stamps.equals(days) and list(grid.slots) == [*range(6), *range(7, 15)]
    future = grid.future(3)
    assert future.equals(pd.date_range("2021-04-04", periods=3, freq="D", unit=unit, tz=tz))
    assert future.dtype == days.dtype


@pytest.mark.parametrize(
    ("stamps", "step", "missing", "future"),
    [
        (pd.date_range("2020-01-01", periods=12, freq="MS").delete(4), "MS", 1, ["2021-01-01", "2021-02-01"]),
        (pd.period_range("2020Q1", periods=6, freq="Q").delete(2), "QS-JAN", 1, ["2021-07-01", "2021-10-01"]),
        (pd.bdate_range("2021-01-04", periods=20).delete(7), "B", 1, ["2021-02-01", "2021-02-02"]),
        (pd.date_range("2021-01-01", periods=6, freq="15min"), "15min", 0, ["2021-01-01 01:30", "2021-01-01 01:45"]),
        (pd.Index([0, 2, 4, 8]), 2, 1, [10, 12]),
        (pd.Index([0.0, 0.5, 1.0, 2.0]), 0.5, 1, [2.5, 3.0]),
        (pd.Index([0.0, 0.2, 0.5, 0.7]), 0.1, 4, [0.8, 0.9]),
        (
            pd.DatetimeIndex(["2021-01-01 01:00", "2021-01-01 03:00", "2021-01-01 06:00"]),
            "h",
            3,
            ["2021-01-01 07:00", "2021-01-01 08:00"],
        ),
    ],
)
def test_time_grid_steps_for_calendar_and_numeric_stamps(stamps, step, missing, future):
    grid = time_grid(stamps)
    assert (grid.step.freqstr if isinstance(step, str) else grid.step) == pytest.approx(
        step
    ) and grid.missing == missing
    if isinstance(future[0], str):
        assert grid.future(2).equals(pd.DatetimeIndex(future)) and grid.future(2).dtype == grid.stamps.dtype
    else:
        np.testing.assert_allclose(grid.future(2), future)
        assert grid.future(2).dtype == stamps.dtype


@pytest.mark.parametrize(
    ("stamps", "detail"),
    [
        (
            pd.DatetimeIndex(["2021-01-01", "2021-01-02", "2021-01-03 05:17", "2021-01-05"]),
            "only 4 of the 5761 steps of min",
        ),
        (pd.Index([0.0, 1.0, 2.0 + np.pi, 6.0]), r"steps of \[1.0, 4.14.*share no common step with the smallest"),
        (pd.DatetimeIndex(["2021-01-01", "2021-01-02", "2021-03-01"]), "only 3 of the 60 steps of 24h"),
        (
            pd.DatetimeIndex(["2021-01-01 00:00:00", "2021-01-01 00:00:01", "2021-01-02"]),
            "only 3 of the 86401 steps of s",
        ),
    ],
)
def test_irregular_stamps_are_an_error_that_says_how_to_resample(stamps, detail):
    with pytest.raises(ValueError, match=f"not on one regular grid.*{detail}.*resample"):
        time_grid(stamps, "series 'x'")
    frame = pd.DataFrame({"t": stamps, "a": np.arange(len(stamps), dtype=float)})
    with pytest.raises(ValueError, match="series 'series': the time stamps are not on one regular grid"):
        read_series(frame, time_column="t")


def test_a_single_stamp_has_no_step_to_forecast_with():
    grid = time_grid(pd.DatetimeIndex(["2021-01-01"]))
    assert grid.missing == 0
    with pytest.raises(ValueError, match="single time stamp"):
        grid.future(1)


def test_semicolon_separated_comma_decimal_csv_names_the_separator(tmp_path):
    (tmp_path / "de.csv").write_text("date;a;b\n2021-01-01;1,5;2,0\n2021-01-02;1,7;2,1\n")
    with pytest.raises(ValueError, match=r"de.csv looks ';'-separated.*sep=';', decimal=','"):
        read_series(tmp_path / "de.csv", time_column="date")
    (tmp_path / "tabs.csv").write_text("date\ta\n2021-01-01\t1.5\n")
    with pytest.raises(ValueError, match="tab-separated"):
        read_series(tmp_path / "tabs.csv", time_column="date")


def test_read_numeric_time_column_and_numbers_stored_as_text():
    df = pd.DataFrame({"hours": [0.0, 0.5, 1.0], "a": ["1.5", "2", None]})
    (s,) = read_series(df, time_column="hours").series
    np.testing.assert_allclose(s.positions, [0, 1, 2])
    np.testing.assert_allclose(s.values[:2, 0], [1.5, 2.0])
    assert np.isnan(s.values[2, 0])


def test_text_dates_with_and_without_a_time_of_day_are_read():
    """pandas infers one format from the first stamp; ISO 8601 stamps of mixed forms still parse."""
    df = pd.DataFrame({"date": ["2021-01-01", "2021-01-01 12:00", "2021-01-02"], "a": [1.0, 2.0, 3.0]})
    (s,) = read_series(df, time_column="date").series
    assert s.index.equals(pd.date_range("2021-01-01", periods=3, freq="12h", name="date"))


def test_unsorted_time_stamps_are_sorted_with_their_rows():
    df = frame(5)
    shuffled = df.iloc[[3, 0, 4, 1, 2]]
    (s,) = read_series(shuffled).series
    assert s.index.equals(df.index)
    np.testing.assert_allclose(s.values, df.to_numpy())


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda: pd.concat([frame(3), frame(2)]), {}, "duplicate time stamps"),
        (lambda: frame(4).assign(city="oslo"), {}, r"not numeric.*city"),
        (lambda: frame(4).reset_index(), {}, r"not numeric.*date"),
        (lambda: frame(4).assign(c=np.nan), {}, r"\['c'\] have no observed value"),
        (lambda: frame(0), {}, "empty"),
        (lambda: frame(3).assign(a=[1.0, np.inf, 2.0]), {}, r"column 'a' holds inf at row Timestamp\('2021-01-02"),
        (
            lambda: frame(3).reset_index().assign(b=[1.0, 2.0, 1e300]),
            {"time_column": "date"},
            "'b' holds 1e.300 at row 2",
        ),
        (lambda: frame(3).assign(b=[1.0, -np.inf, 2.0]), {}, "'b' holds -inf"),
        (lambda: frame(3), {"time_column": "when"}, "time column 'when' not found"),
        (
            lambda: frame(3).reset_index().assign(date=["2021-01-01", None, "2021-01-03"]),
            {"time_column": "date"},
            "missing a time stamp",
        ),
        (
            lambda: frame(3).reset_index().assign(date=["monday", "x", "y"]),
            {"time_column": "date"},
            "neither numbers nor dates",
        ),
        (lambda: frame(3), {"columns": ["a", "zz"]}, r"columns \['zz'\] not found"),
        (lambda: frame(3), {"series_column": "site"}, "series column 'site' not found"),
        (lambda: frame(3)[[]], {}, "no variable columns"),
        (lambda: {}, {}, "empty"),
        (lambda: {"p": frame(3), "q": frame(3, columns=("a", "c"))}, {}, "differ from the first series"),
    ],
)
def test_bad_input_gets_a_clear_error(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_series(make(), **kwargs)


def test_all_missing_column_allowed_for_imputation_inputs():
    data = read_series(frame(4).assign(c=np.nan), allow_all_missing=True)
    assert data.columns == ["a", "b", "c"] and np.isnan(data.series[0].values[:, 2]).all()


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_series(tmp_path / "nope.csv")
    (tmp_path / "data.txt").write_text("a\n1\n")
    with pytest.raises(ValueError, match=".csv or .parquet"):
        read_series(tmp_path / "data.txt")
    for name, content in (("empty.csv", b""), ("binary.csv", b"\xff\xfe\x00\x81"), ("junk.parquet", b"not parquet")):
        (tmp_path / "bad" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"cannot read .*{name} as"):
            read_series(tmp_path / "bad" / name)
    with pytest.raises(FileNotFoundError, match="no .csv"):
        read_series(tmp_path)


# ----------------------------------------------------------------------------- windows and split


def test_window_starts_cover_every_step():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 3) == [0]


def test_windows_hold_the_series_values_and_relative_positions():
    data = read_series({"x": frame(20), "y": frame(9, seed=1)})
    w = make_windows(data, window=8, stride=4)
    assert w.values.shape == (len(w), 2, 8) and len(w) == 4 + 2
    for i in range(len(w)):
        s = data.series[w.series_index[i]]
        np.testing.assert_allclose(w.values[i].T, s.values[w.start[i] : w.start[i] + 8])
        np.testing.assert_allclose(w.time_pos[i], np.arange(8))


def test_short_series_is_padded_with_missing_steps():
    data = read_series(frame(5))
    w = make_windows(data, window=8, stride=4)
    assert len(w) == 1 and w.length[0] == 5
    assert np.isnan(w.values[0, :, 5:]).all() and np.isfinite(w.values[0, :, :5]).all()
    np.testing.assert_allclose(w.time_pos[0], np.arange(8))
    _, mask = to_model_space(w.values, Normalizer.fit(data))
    assert mask[0, :, 5:].sum() == 0 and mask[0, :, :5].sum() == 10


def test_split_keeps_the_last_part_of_each_series_for_validation():
    data = read_series({"x": frame(10), "y": frame(3, seed=1)})
    train, val = split_by_time(data, 0.2)
    assert [len(s) for s in train.series] == [8, 2] and [len(s) for s in val.series] == [2, 1]
    assert val.series[0].index[0] > train.series[0].index[-1]
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_time(data, 1.0)


# ----------------------------------------------------------------------------- normaliser


def test_normalizer_uses_observed_training_values_only():
    df = frame(10)
    df.iloc[1, 0] = np.nan
    train, _ = split_by_time(read_series(df), 0.3)
    fitted = Normalizer.fit(train)
    np.testing.assert_allclose(fitted.mean, df.iloc[:7].mean().to_numpy())
    np.testing.assert_allclose(fitted.std, df.iloc[:7].std(ddof=0).to_numpy())

    changed = df.copy()
    changed.iloc[9, 1] = 1e6
    changed.iloc[8, 0] = np.nan
    refitted = Normalizer.fit(split_by_time(read_series(changed), 0.3)[0])
    np.testing.assert_allclose(refitted.mean, fitted.mean)
    np.testing.assert_allclose(refitted.std, fitted.std)


def test_normalizer_constant_column_gets_scale_one_and_round_trips():
    df = frame(6).assign(c=3.0)
    norm = Normalizer.fit(read_series(df))
    assert norm.std[2] == 1.0 and norm.mean[2] == 3.0
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    values = df.to_numpy()
    normalised = restored.normalize(values)
    assert np.allclose(normalised[:, 2], 0.0)
    np.testing.assert_allclose(norm.denormalize(normalised), values)
    x, mask = to_model_space(values.T[None], norm)
    np.testing.assert_allclose(norm.denormalize(x, feature_axis=-2)[0], values.T, rtol=1e-5)
    assert mask.all()


def test_domain_normalizer_ignores_validation_part(tmp_path):
    df = frame(40).reset_index()
    df.to_csv(tmp_path / "a.csv", index=False)
    first = TimeSeriesDomain(SMALL_NET, source="path", path=str(tmp_path / "a.csv"), time_column="date", window=8)
    df.loc[39, "a"] = 1e6
    df.loc[38, "b"] = np.nan
    df.to_csv(tmp_path / "a.csv", index=False)
    second = TimeSeriesDomain(SMALL_NET, source="path", path=str(tmp_path / "a.csv"), time_column="date", window=8)
    np.testing.assert_allclose(first.normalizer.mean, second.normalizer.mean)
    np.testing.assert_allclose(first.normalizer.std, second.normalizer.std)


# ----------------------------------------------------------------------------- training masks


def gappy_observed(b: int = 6, k: int = 3, steps: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    observed = torch.rand(b, k, steps, generator=g) > 0.2
    for i in range(b):
        observed[i, i % k, 3 * i : 3 * i + 5] = False
    return observed


@pytest.mark.parametrize("strategy", ["random", "historical", "block", {"random": 1, "historical": 1, "block": 2}])
def test_masker_hides_only_observed_values_and_something_in_every_sample(strategy):
    observed = gappy_observed()
    masker = TrainingMasker(strategy, block_length=(2, 6))
    for seed in range(5):
        hidden = masker(observed, torch.Generator().manual_seed(seed))
        assert not (hidden & ~observed).any()
        assert hidden.flatten(1).any(1).all()
        assert (observed & ~hidden).any()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(masker(observed, g1), masker(observed, g2))


def test_masker_hides_something_even_when_data_has_no_gaps():
    observed = torch.ones(4, 1, 16, dtype=torch.bool)
    hidden = TrainingMasker("historical")(observed, torch.Generator().manual_seed(0))
    assert hidden.flatten(1).any(1).all()


def test_random_fraction_varies_per_sample():
    observed = torch.ones(64, 2, 50, dtype=torch.bool)
    fractions = random_hidden(observed, torch.Generator().manual_seed(0)).float().mean((1, 2))
    assert fractions.min() < 0.2 and fractions.max() > 0.8


def test_historical_uses_another_samples_missing_pattern():
    observed = gappy_observed()
    hidden = historical_hidden(observed, torch.Generator().manual_seed(1))
    for i in range(len(observed)):
        candidates = [j for j in range(len(observed)) if j != i]
        assert any(torch.equal(hidden[i], observed[i] & ~observed[j]) for j in candidates)


def test_block_hides_contiguous_steps():
    observed = torch.ones(8, 3, 40, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    hidden = block_hidden(observed, g, block_length=(5, 9), all_features_prob=1.0)
    for sample in hidden:
        assert torch.equal(sample[0], sample[1]) and torch.equal(sample[0], sample[2])
        steps = torch.nonzero(sample[0]).flatten()
        assert 5 <= len(steps) <= 9 and steps[-1] - steps[0] == len(steps) - 1
    per_feature = block_hidden(observed, g, block_length=(5, 9), all_features_prob=0.0)
    assert any(not torch.equal(s[0], s[1]) for s in per_feature)


def test_masker_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown training mask"):
        TrainingMasker({"random": 1, "blocks": 1})
    with pytest.raises(ValueError, match="positive sum"):
        TrainingMasker({"random": 0})
    with pytest.raises(ValueError, match="block_length"):
        TrainingMasker("block", block_length=(5, 2))


def test_training_batch_conditions_on_kept_values_and_scores_hidden_ones():
    domain = TimeSeriesDomain(SMALL_NET, source="synthetic", window=32, training_mask={"random": 1, "block": 1})
    batch = next(iter(domain.datamodule(batch_size=8).train_dataloader()))
    tb = domain.training_batch(batch, torch.Generator().manual_seed(0))
    observed = batch["mask"] > 0
    cond_mask, loss_mask = tb.cond["cond_mask"] > 0, tb.loss_mask > 0
    offset = window_offset(batch["x"], tb.cond["cond_mask"])
    assert torch.allclose(tb.x, (batch["x"] - offset) * observed)
    kept_mean = (tb.x * tb.cond["cond_mask"]).sum(-1) / tb.cond["cond_mask"].sum(-1).clamp(min=1)
    assert kept_mean.abs().max() < 1e-5
    assert torch.equal(loss_mask, observed & ~cond_mask)
    assert not (cond_mask & ~observed).any() and not (cond_mask & loss_mask).any()
    assert loss_mask.flatten(1).any(1).all()
    assert torch.equal(tb.cond["cond_values"], tb.x * tb.cond["cond_mask"])
    assert torch.equal(tb.cond["time_pos"], batch["time_pos"])
    out = domain.build_net()(tb.x, torch.rand(len(tb.x)), **tb.cond)
    assert out.shape == tb.x.shape


# ----------------------------------------------------------------------------- embedded data and domain


@pytest.mark.parametrize(("source", "k"), [("co2", 1), ("macrodata", 12), ("interest_inflation", 2), ("synthetic", 4)])
def test_embedded_sources_load(source, k):
    domain = TimeSeriesDomain(SMALL_NET, source=source, window=32, stride=16)
    assert domain.sample_shape == (k, 32) and len(domain.columns) == k
    train, val = domain.splits()
    assert all(len(v) >= 1 for v in val.series)
    dm = domain.datamodule(batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, k, 32) and batch["mask"].shape == (4, k, 32) and batch["time_pos"].shape == (4, 32)
    assert len(dm.val) > 0
    assert torch.isfinite(batch["x"]).all()
    if source == "co2":
        assert sum(np.isnan(s.values).sum() for s in train.series) > 0
    assert isinstance(domain.build_net(), CSDINet)


def test_interest_inflation_is_the_quarterly_table_and_columns_pick_series():
    frame_ = interest_inflation_frame()
    assert list(frame_.columns) == ["Dp", "R"] and len(frame_) == 107
    assert frame_.index[0] == pd.Timestamp("1972-04-01") and frame_.index[-1] == pd.Timestamp("1998-10-01")
    assert (frame_.index.to_series().diff().dropna().dt.days.between(89, 92)).all()
    assert frame_.notna().all().all()
    domain = TimeSeriesDomain(SMALL_NET, source="interest_inflation", columns=["R"], window=16, stride=4)
    assert domain.columns == ["R"] and domain.sample_shape == (1, 16)
    train, val = domain.splits()
    np.testing.assert_array_equal(
        np.concatenate([train.series[0].values, val.series[0].values])[:, 0], frame_["R"].to_numpy()
    )


def test_synthetic_is_seeded_and_truth_matches_observed():
    observed, truth = synthetic_frames(num_series=3, length=120, num_features=3, seed=5)
    again, _ = synthetic_frames(num_series=3, length=120, num_features=3, seed=5)
    other, _ = synthetic_frames(num_series=3, length=120, num_features=3, seed=6)
    assert all(observed[k].equals(again[k]) for k in observed)
    assert not observed["s0"].equals(other["s0"])
    for name, frame_ in observed.items():
        seen = frame_.notna().to_numpy()
        assert 0 < (~seen).sum() < seen.size
        np.testing.assert_allclose(frame_.to_numpy()[seen], truth[name].to_numpy()[seen])
        assert truth[name].notna().all().all()


def test_domain_config_file_builds_the_domain():
    cfg = OmegaConf.load(CONFIG)
    from hydra.utils import instantiate

    cfg.domain.window = 16
    domain = instantiate(cfg.domain, _recursive_=False)
    assert domain.sample_shape == (1, 16) and cfg.trainer.max_steps > 0 and cfg.data.batch_size > 0


def test_domain_rebuilds_from_checkpoint_kwargs_without_data():
    domain = TimeSeriesDomain(SMALL_NET, source="synthetic", window=16)
    restored = TimeSeriesDomain(
        SMALL_NET, source="path", path="/nonexistent.csv", window=16, **domain.checkpoint_kwargs()
    )
    assert restored.columns == domain.columns and restored.sample_shape == domain.sample_shape
    x = torch.randn(2, 4, 16)
    np.testing.assert_allclose(restored.decode(x), domain.decode(x))
    with pytest.raises(FileNotFoundError):
        restored.datamodule(batch_size=2)


def test_domain_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown source"):
        TimeSeriesDomain(SMALL_NET, source="weather")
    with pytest.raises(ValueError, match="needs path"):
        TimeSeriesDomain(SMALL_NET, source="path")


def test_decode_returns_data_units():
    domain = TimeSeriesDomain(SMALL_NET, source="co2", window=16)
    train, _ = domain.splits()
    values = train.series[0].values[:16].T[None]
    x, mask = to_model_space(values, domain.normalizer)
    decoded = domain.decode(x)
    observed = mask.numpy() > 0
    np.testing.assert_allclose(decoded[observed], values[observed], rtol=1e-6)
    assert 300 < decoded[observed].mean() < 400


def test_sampling_returns_given_values_exactly_and_fills_the_rest():
    domain = TimeSeriesDomain(SMALL_NET, source="synthetic", window=16)
    example = domain.example_batch(n=3)
    assert (example["given"] < example["mask"]).any()
    net = small_net(4)
    inputs = domain.imputation_inputs(example["x"], example["given"], example["time_pos"])
    sched = schedule.get("cosine")
    out = sampler.sample(
        domain.wrap_denoiser(Denoiser(net, sched)), (3, 4, 16), sched, method="ddim", steps=4, seed=0, **inputs
    )
    known = example["given"] > 0
    assert torch.equal(out[known], example["x"][known])
    assert torch.isfinite(out).all() and not torch.equal(out[~known], torch.zeros_like(out[~known]))
    single = sampler.sample(
        domain.wrap_denoiser(Denoiser(net, sched)),
        (1, 4, 16),
        sched,
        method="ddim",
        steps=4,
        seed=[2],
        **domain.imputation_inputs(example["x"][2:], example["given"][2:], example["time_pos"][2:]),
    )
    torch.testing.assert_close(single[0], out[2], atol=1e-5, rtol=1e-4)


def test_offset_denoiser_shifts_the_data_the_network_sees():
    """With ``offset`` c the network works on data minus c: sampling a centred mixture's exact
    denoiser with per-sample offsets gives the offset-free samples shifted by c (deterministic DDIM
    keeps x_t^c = x_t + alpha_t c along the path), and the network never sees the shift."""
    mixture = GaussianMixture.random(2, 3, seed=0)
    sched = schedule.get("cosine")
    exact = mixture.denoiser(sched)
    seen = []

    def net(x_t, t):
        seen.append(x_t.abs().max().item())
        return exact(x_t, t)

    D = OffsetDenoiser(Denoiser(net, sched, prediction="x0"))
    offset = torch.linspace(-50.0, 50.0, 64, dtype=torch.float64)[:, None].expand(64, 2)
    plain = sampler.sample(D, (64, 2), sched, "ddim", 30, seed=3, dtype=torch.float64)
    seen.clear()
    shifted = sampler.sample(D, (64, 2), sched, "ddim", 30, seed=3, dtype=torch.float64, cond={"offset": offset})
    gap = (shifted - offset - plain).abs().max()
    assert gap < 0.05, gap
    assert max(seen) < 10.0
    assert (shifted - plain).abs().max() > 40.0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_domain_wraps_its_denoiser_in_the_offset_shift(prediction):
    """``wrap_denoiser`` gives the ``OffsetDenoiser``: the network sees ``x_t - alpha * offset`` and
    the estimate comes back shifted by ``offset`` (the very operations the core Denoiser once did,
    so samples keep their bits); without an offset it is the plain denoiser."""
    domain = TimeSeriesDomain(SMALL_NET, source="synthetic", window=16)
    net = small_net(4)
    sched = schedule.get("cosine")
    plain = Denoiser(net, sched, prediction)
    wrapped = domain.wrap_denoiser(plain)
    assert isinstance(wrapped, OffsetDenoiser)
    example = domain.example_batch(n=2)
    cond = domain.imputation_inputs(example["x"], example["given"], example["time_pos"])["cond"]
    x_t, t = torch.randn(2, 4, 16), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        alpha, sigma = (a[:, None, None] for a in sched.alpha_sigma(t))
        net_cond = {k: v for k, v in cond.items() if k != "offset"}
        shifted = x_t - alpha * cond["offset"]
        expected = x0_from(prediction, net(shifted, t, **net_cond), shifted, alpha, sigma) + cond["offset"]
        assert torch.equal(wrapped(x_t, t, **cond), expected)
        assert torch.equal(wrapped(x_t, t, **net_cond), plain(x_t, t, **net_cond))


def test_save_writes_csv_npz_and_previews(tmp_path):
    domain = TimeSeriesDomain(SMALL_NET, source="synthetic", window=16)
    example = domain.example_batch(n=2)
    samples = example["x"][None] + 0.1 * torch.randn(5, 2, 4, 16)
    paths = domain.save(
        samples,
        tmp_path,
        None,
        seeds=[0, 1, 2, 3, 4],
        trajectory=torch.randn(3, 2, 4, 16),
        given_values=example["x"],
        given=example["given"],
        time_pos=example["time_pos"],
    )
    assert {p.name for p in paths} == {"windows.csv", "samples.npz", "grid.png", "strip.png"}
    table = pd.read_csv(tmp_path / "windows.csv")
    assert len(table) == 2 * 16
    assert {"window", "step", "time_pos", "x0", "x0_q05", "x0_q95", "x0_observed"} <= set(table.columns)
    assert (table["x0_q05"] <= table["x0"]).all() and (table["x0"] <= table["x0_q95"]).all()
    np.testing.assert_allclose(table["x1"].to_numpy(), np.median(domain.decode(samples), 0)[:, 1].reshape(-1))
    stored = np.load(tmp_path / "samples.npz")
    assert stored["values"].shape == (5, 2, 4, 16) and list(stored["columns"]) == domain.columns
    for name in ("grid.png", "strip.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100

    single = domain.save(samples[0], tmp_path / "one", None, seeds=[7, 8])
    table = pd.read_csv(tmp_path / "one" / "windows.csv")
    assert list(table["seed"].unique()) == [7, 8] and "x0_q05" not in table.columns
    assert all(p.exists() for p in single)


@pytest.mark.slow
def test_short_training_lowers_the_imputation_loss():
    from toolkit.core.loss import diffusion_loss

    domain = TimeSeriesDomain(SMALL_NET, source="co2", window=32, stride=16)
    torch.manual_seed(0)
    net = domain.build_net()
    sched = schedule.get("cosine")
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-3)
    loader = domain.datamodule(batch_size=16, seed=0).train_dataloader()
    g = torch.Generator().manual_seed(0)
    fixed = domain.training_batch(next(iter(loader)), torch.Generator().manual_seed(1))

    def held_out_loss() -> float:
        with torch.no_grad():
            return diffusion_loss(
                net,
                fixed.x,
                sched,
                mask=fixed.loss_mask,
                cond=fixed.cond,
                generator=torch.Generator().manual_seed(2),
            ).item()

    before = held_out_loss()
    for _ in range(10):
        for batch in loader:
            tb = domain.training_batch(batch, g)
            loss = diffusion_loss(net, tb.x, sched, mask=tb.loss_mask, cond=tb.cond, generator=g)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    assert held_out_loss() < 0.6 * before


def test_window_normalizer_scales_by_the_spread_within_windows():
    """A steep trend plus a small wave: the global std is the trend's, the window scale the wave's
    (plus the trend's share inside one window), so centred windows fill the unit range."""
    t = np.arange(2000.0)
    wave = np.sin(2 * np.pi * t / 16)
    frame = pd.DataFrame({"x": 0.5 * t + wave}, index=pd.date_range("2020", periods=len(t), freq="D"))
    data = read_series(frame)
    global_fit, window_fit = Normalizer.fit(data), Normalizer.fit(data, window=16)
    assert global_fit.std[0] == pytest.approx(np.std(frame["x"]), rel=1e-9)
    within = np.sqrt(0.5 + (0.5**2) * (16**2 - 1) / 12)  # wave variance + a 16-step ramp's variance
    assert window_fit.std[0] == pytest.approx(within, rel=0.02)
    assert window_fit.mean[0] == pytest.approx(global_fit.mean[0])
