"""The pieces of benchmarks/imputation.py: hiding, the simple fills, the scores, and one end-to-end run
on an untrained checkpoint so that the script cannot rot."""

import numpy as np
import pytest
from conftest import load_benchmark, save_untrained_checkpoint

bench = load_benchmark("imputation")


def ramp_windows(n: int = 6, k: int = 2, steps: int = 16) -> np.ndarray:
    t = np.arange(steps, dtype=float)
    return np.stack([np.stack([2.0 * t + 10 * j + i for j in range(k)]) for i in range(n)])


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_random_hiding_hits_the_rate_and_keeps_a_given_value_per_window(rate):
    truth = ramp_windows(200, 2, 32)
    truth[:, 0, :5] = np.nan  # missing in the data: never hidden, never scored
    hidden = bench.hide(truth, "random", rate, seed=0)
    observed = ~np.isnan(truth)
    assert not (hidden & ~observed).any()
    assert hidden[observed].mean() == pytest.approx(rate, abs=0.02)
    assert ((observed & ~hidden).reshape(200, -1).any(axis=1)).all()
    np.testing.assert_array_equal(hidden, bench.hide(truth, "random", rate, seed=0))


def test_block_hiding_is_one_run_per_variable():
    hidden = bench.hide(ramp_windows(50, 3, 32), "block", 0.0, seed=1)
    for window in hidden:
        for row in window:
            run = np.flatnonzero(row)
            assert 8 <= len(run) <= 16 and np.all(np.diff(run) == 1)


def test_fills_use_only_the_given_values():
    truth = ramp_windows()
    given = truth.copy()
    given[:, :, 3:9] = np.nan
    fallback = np.array([-1.0, -2.0])
    np.testing.assert_allclose(bench.linear(given, fallback), truth)  # a ramp is linear
    carried = bench.locf(given, fallback)
    np.testing.assert_allclose(carried[:, :, 3:9], np.repeat(truth[:, :, 2:3], 6, axis=2))
    means = bench.window_mean(given, fallback)
    expected = np.nanmean(given, axis=-1, keepdims=True)
    np.testing.assert_allclose(means[:, :, 3:9], np.repeat(expected, 6, axis=2))
    empty = np.full_like(given, np.nan)
    for fill in (bench.linear, bench.locf, bench.window_mean):
        np.testing.assert_allclose(fill(empty, fallback), np.broadcast_to(fallback[None, :, None], given.shape))


def test_scores_in_training_std_units_and_crps_of_a_point_equals_its_mae():
    truth = ramp_windows()
    hidden = np.zeros(truth.shape, dtype=bool)
    hidden[:, :, ::2] = True
    std = np.array([2.0, 4.0])
    exact = bench.score(truth, hidden, std, truth[None])
    assert exact.mae == exact.rmse == exact.crps == 0.0
    shifted = bench.score(truth, hidden, std, truth[None] + np.array([2.0, 4.0])[None, None, :, None])
    assert shifted.mae == pytest.approx(1.0) and shifted.rmse == pytest.approx(1.0)
    assert shifted.crps == pytest.approx(shifted.mae)
    rng = np.random.default_rng(0)
    spread = truth[None] + rng.normal(size=(400, *truth.shape)) * std[None, None, :, None]
    calibrated = bench.score(truth, hidden, std, spread)
    # CRPS of N(y, 1) at y is 2 phi(0) - 1/sqrt(pi) = (sqrt(2) - 1) / sqrt(pi) ~ 0.234; the 19-quantile
    # estimate lands close to it, and three times the spread scores three times worse
    assert calibrated.crps == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi), rel=0.15)
    wide = bench.score(truth, hidden, std, truth[None] + 3 * (spread - truth[None]))
    assert wide.crps == pytest.approx(3 * calibrated.crps, rel=1e-6)


def test_coverage_of_the_band_is_90_percent_when_the_truth_is_one_more_draw():
    rng = np.random.default_rng(1)
    truth = ramp_windows(100, 2, 16)
    hidden = rng.random(truth.shape) < 0.5
    centre = truth + rng.normal(size=truth.shape)
    noise = rng.normal(size=(200, *truth.shape))
    assert bench.coverage(truth, hidden, centre[None] + noise) == pytest.approx(0.90, abs=0.02)
    assert bench.coverage(truth, hidden, centre[None] + 0.3 * noise) < 0.5, "a band 0.3x too narrow holds ~38%"


TINY_TIMESERIES = [
    "domain=timeseries",
    "domain.window=16",
    "domain.net.channels=8",
    "domain.net.layers=1",
    "domain.net.heads=2",
    "domain.net.time_emb_dim=8",
    "domain.net.feature_emb_dim=4",
]


def test_end_to_end_on_an_untrained_checkpoint(tmp_path):
    ckpt = save_untrained_checkpoint(tmp_path / "untrained.ckpt", TINY_TIMESERIES)
    out = tmp_path / "imputation.md"
    bench.main(
        ["--sources", "co2", "--ckpt", f"co2={ckpt}", "--steps", "2", "--n-samples", "2", "--mask-repeats", "1"]
        + ["--no-peer", "--out", str(out)]
    )
    text = out.read_text()
    for row in ("window mean", "LOCF", "linear interpolation", "ours, dpmpp_2m 2 steps", "90% random", "block"):
        assert row in text
    assert "ms per window" in text
    coverage_row = next(
        line for line in text.splitlines() if line.startswith("| ours, dpmpp_2m 2 steps |") and "%" in line
    )
    assert coverage_row.count("%") == 4, "the 5-95% band's coverage in every scenario"
    for title, path in bench.INCLUDED_RESULTS.items():
        assert f"## {title}" in text and f"From `benchmarks/results/{path.name}`" in text
    assert "#### One training step" in text, "the scaling tables come one heading level deeper"


def test_other_results_become_sections_one_heading_level_deeper(tmp_path):
    other = tmp_path / "other.md"
    other.write_text("# Other\n\n- Date: 2026-01-01\n\n### Table\n\n| a |\n")
    lines = bench.included_section("Scaling", other)
    assert lines[0] == "## Scaling" and "#### Table" in lines and "| a |" in lines
    assert "# Other" not in lines and "- Date: 2026-01-01" in lines
    missing = bench.included_section("Forecasting", tmp_path / "absent.md")
    assert missing[0] == "## Forecasting" and "`absent.md` has not been written yet" in missing[2]


class FakeCall:
    """Stands in for ``pypots_peer.CappedCall``: records how the peer was started; ``result()`` is ``outcome``."""

    started: list = []

    def __init__(self, function, cap_seconds, train, test, **kwargs):
        FakeCall.started.append((cap_seconds, kwargs, len(train), test))
        self.cap_seconds, self.kwargs, self.test = cap_seconds, kwargs, test

    def result(self):
        return self.outcome()


@pytest.fixture
def fake_peer(monkeypatch):
    import benchmarks.pypots_peer as peer_module

    FakeCall.started = []
    monkeypatch.setattr(peer_module, "CappedCall", FakeCall)
    monkeypatch.setattr(peer_module, "require_pypots", lambda: None)
    return peer_module


def test_a_peer_past_its_cap_gets_a_stopped_row_and_our_training_a_budget(tmp_path, monkeypatch, fake_peer):
    ckpt = save_untrained_checkpoint(tmp_path / "untrained.ckpt", TINY_TIMESERIES)
    budgets = []

    def stopped(self):
        raise fake_peer.PeerStopped(self.cap_seconds)

    def load_recording_extra(source, ckpt, run_root, max_steps, extra=()):
        budgets.append(list(extra))
        return real_train_or_load(source, ckpt, run_root, max_steps, extra)

    real_train_or_load = bench.train_or_load
    monkeypatch.setattr(FakeCall, "outcome", stopped, raising=False)
    monkeypatch.setattr(bench, "train_or_load", load_recording_extra)
    out = tmp_path / "imputation.md"
    bench.main(
        ["--sources", "co2", "--ckpt", f"co2={ckpt}", "--steps", "2", "--n-samples", "2", "--mask-repeats", "1"]
        + ["--peer-cap", "3", "--fit-budget", "90s", "--out", str(out)]
    )
    assert [(cap, kwargs["fit_seconds"]) for cap, kwargs, _, _ in FakeCall.started] == [(3.0, 90.0)]
    assert budgets == [["trainer.max_time=90s"]]
    text = out.read_text()
    peer_row = next(line for line in text.splitlines() if line.startswith("| PyPOTS CSDI") and "MAE" not in line)
    assert peer_row.count("stopped at 3 s") == 4, "every scenario's cell says the peer was stopped"
    assert "| PyPOTS CSDI | stopped at 3 s | - | stopped at 3 s (--peer-cap)" in text
    assert "| ours, dpmpp_2m 2 steps |" in text


def test_a_peer_stopped_by_its_training_budget_is_scored_and_named_capped(tmp_path, monkeypatch, fake_peer):
    ckpt = save_untrained_checkpoint(tmp_path / "untrained.ckpt", TINY_TIMESERIES)

    def budget_stopped(self):
        samples = np.repeat(np.nan_to_num(self.test, nan=0.0)[None], self.kwargs["n_samples"], axis=0)
        return {
            "samples": samples,
            "fit_seconds": 90.4,
            "predict_seconds": 1.0,
            "version": "1.3",
            "iterations": 41,
            "planned_iterations": 1500,
            "budget_stopped": True,
            "best_epoch": 5,
        }

    monkeypatch.setattr(FakeCall, "outcome", budget_stopped, raising=False)
    out = tmp_path / "imputation.md"
    bench.main(
        ["--sources", "co2", "--ckpt", f"co2={ckpt}", "--steps", "2", "--n-samples", "2", "--mask-repeats", "1"]
        + ["--fit-budget", "90s", "--out", str(out)]
    )
    (cap, kwargs, windows, _), *others = FakeCall.started
    epochs, batch = kwargs["epochs"], kwargs["batch_size"]
    assert not others and cap == bench.PEER_CAP_SECONDS and kwargs["fit_seconds"] == 90.0
    assert epochs * -(-windows // batch) >= bench.PEER_ITERATIONS > (epochs - 1) * -(-windows // batch)
    text = out.read_text()
    scores = next(line for line in text.splitlines() if line.startswith("| PyPOTS CSDI (capped) |") and "/" in line)
    assert scores.count("/") == 8, "the capped peer is scored in every scenario"
    assert "CAPPED: training stopped at its time budget after 41 of 1500 iterations" in text
    assert "weights of epoch 5" in text
    assert "| PyPOTS CSDI (capped) | 90 | - |" in text, "a loaded checkpoint has no fit time to compare with"


def test_the_peer_trains_while_ours_does_and_both_fit_times_are_compared(tmp_path, monkeypatch, fake_peer):
    """Without a checkpoint: the peer starts before our training (with its own default budget), our model is
    trained with the default config, and the fit table gives both wall times and their ratio."""
    order = []

    def finished(self):
        order.append("peer result")
        samples = np.repeat(np.nan_to_num(self.test, nan=0.0)[None], self.kwargs["n_samples"], axis=0)
        out = {"samples": samples, "fit_seconds": 30.0, "predict_seconds": 1.0, "version": "1.3"}
        return {**out, "iterations": 1500, "planned_iterations": 1500, "budget_stopped": False, "best_epoch": 9}

    def tiny_training(source, ckpt, run_root, max_steps, extra=()):
        order.append(f"ours trained, peer started: {len(FakeCall.started)}")
        path = save_untrained_checkpoint(tmp_path / "fresh.ckpt", TINY_TIMESERIES)
        return bench.Imputer.load(path), path, 20.0

    monkeypatch.setattr(FakeCall, "outcome", finished, raising=False)
    monkeypatch.setattr(bench, "train_or_load", tiny_training)
    monkeypatch.setattr(bench, "trained_steps", lambda ckpt: 700)
    out = tmp_path / "imputation.md"
    bench.main(
        ["--sources", "co2", "--steps", "2", "--n-samples", "2", "--mask-repeats", "1", "--override"]
        + [*TINY_TIMESERIES[1:], "--out", str(out)]
    )
    assert order == ["ours trained, peer started: 1", "peer result"]
    (cap, kwargs, _, _), *others = FakeCall.started
    assert kwargs["fit_seconds"] == bench.budget_seconds(bench.PEER_FIT_BUDGETS["co2"])
    text = out.read_text()
    assert "| ours | 20 | 1.00x | 700 steps of batch 32, ended by early stopping on val/crps |" in text
    assert "| PyPOTS CSDI | 30 | 1.50x | 1500 of 1500 iterations" in text


@pytest.mark.parametrize(
    "arguments, message",
    [(["--peer-cap", "-1"], "--peer-cap must be"), (["--fit-budget", "soon"], "--fit-budget: time budget")],
)
def test_bad_caps_are_refused(arguments, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sources", "co2", *arguments])
    assert message in capsys.readouterr().err
