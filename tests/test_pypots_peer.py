"""benchmarks/pypots_peer.py: the PyPOTS CSDI peer keeps its contract (all draws, observed values kept,
the input's units, seeded) on a tiny model, and says how to install PyPOTS when it is missing; ``CappedCall``
stops a call past its time cap."""

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pypots_peer.py"
TINY = dict(
    channels=8,
    layers=1,
    heads=2,
    time_emb_dim=8,
    feature_emb_dim=4,
    diffusion_emb_dim=8,
    n_diffusion_steps=5,
    batch_size=8,
)
OFFSET = 1000.0


@pytest.fixture(scope="module")
def peer():
    return load_benchmark("pypots_peer")


@pytest.fixture(scope="module")
def windows():
    """Random walks far from zero (so a draw left in standardised units would show) with NaN holes."""
    rng = np.random.default_rng(0)
    train = OFFSET + np.cumsum(rng.normal(size=(16, 8, 2)), axis=1)
    train[rng.random(train.shape) < 0.2] = np.nan
    test = OFFSET + np.cumsum(rng.normal(size=(4, 8, 2)), axis=1)
    test[rng.random(test.shape) < 0.5] = np.nan
    return train, test


@pytest.fixture(scope="module")
def result(peer, windows):
    pytest.importorskip("pypots")
    train, test = windows
    return peer.pypots_csdi(train, test, epochs=1, n_samples=3, seed=5, **TINY)


def test_samples_keep_the_contract(result, windows):
    import pypots

    _, test = windows
    observed = ~np.isnan(test)
    samples = result["samples"]
    assert samples.shape == (3, *test.shape)
    assert samples.dtype == test.dtype
    assert np.isfinite(samples).all()
    assert (samples[:, observed] == test[observed]).all()
    missing = samples[:, ~observed]
    assert not np.allclose(missing[0], missing[1]), "the draws must be separate samples, not one repeated"
    assert abs(np.median(missing) - OFFSET) < 50, "draws must come back in the input's units"
    assert result["fit_seconds"] > 0 and result["predict_seconds"] > 0
    assert result["version"] == pypots.__version__


def test_seed_reproduces_and_changes_the_draws(peer, windows, result):
    train, test = windows
    again = peer.pypots_csdi(train, test, epochs=1, n_samples=3, seed=5, **TINY)
    other = peer.pypots_csdi(train, test, epochs=1, n_samples=3, seed=6, **TINY)
    np.testing.assert_array_equal(again["samples"], result["samples"])
    missing = np.isnan(test)
    assert not np.allclose(other["samples"][:, missing], result["samples"][:, missing])


def test_thread_count_is_restored(peer, windows, result):
    train, test = windows
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        peer.pypots_csdi(train[:8], test[:1], epochs=1, n_samples=1, **TINY)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_full_training_reports_its_iterations(result):
    assert result["iterations"] == result["planned_iterations"] == 2  # 16 windows in batches of 8, one epoch
    assert not result["budget_stopped"] and result["best_epoch"] == 1


def test_a_training_budget_stops_after_the_first_finished_epoch_and_still_samples(peer, windows):
    pytest.importorskip("pypots")
    train, test = windows
    out = peer.pypots_csdi(train, test, epochs=50, n_samples=2, seed=5, fit_seconds=1e-6, **TINY)
    assert out["budget_stopped"] and out["planned_iterations"] == 100
    assert out["iterations"] == 3, "the epoch's 2 iterations, then the first past the budget"
    assert out["best_epoch"] == 1
    observed = ~np.isnan(test)
    assert np.isfinite(out["samples"]).all() and (out["samples"][:, observed] == test[observed]).all()


@pytest.mark.parametrize(
    "train_shape, test_shape, kwargs, message",
    [
        ((4, 8, 2), (2, 6, 2), {}, "must share"),
        ((4, 8), (2, 8, 2), {}, r"\[N, L, K\]"),
        ((4, 8, 2), (2, 8, 2), {"n_samples": 0}, "n_samples"),
        ((4, 8, 2), (2, 8, 2), {"channels": 10, "heads": 4}, "divisible"),
        ((4, 8, 2), (2, 8, 2), {"fit_seconds": 0}, "fit_seconds must be a positive"),
    ],
)
def test_bad_input_is_refused_before_training(peer, train_shape, test_shape, kwargs, message):
    arguments = {"epochs": 1, "n_samples": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        peer.pypots_csdi(np.zeros(train_shape), np.zeros(test_shape), **arguments)


def test_unobserved_training_channel_is_refused(peer):
    train = np.zeros((4, 8, 2))
    train[..., 1] = np.nan
    with pytest.raises(ValueError, match=r"channels \[1\] have no observed value"):
        peer.pypots_csdi(train, np.zeros((2, 8, 2)), epochs=1, n_samples=1)


def test_missing_pypots_names_the_install_command(peer, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypots", None)
    with pytest.raises(ImportError, match=r"bench-ts.*--only-binary tokenizers"):
        peer.pypots_csdi(np.zeros((4, 8, 2)), np.zeros((2, 8, 2)), epochs=1, n_samples=1)


@pytest.fixture(scope="module")
def capped():
    """benchmarks.pypots_peer imported by its package name, as the benchmarks do: the spawned process
    imports the module of the function it runs by that name."""
    import importlib

    root = str(SCRIPT.parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.pypots_peer")


def test_a_capped_call_is_stopped_past_its_cap(capped):
    started = time.perf_counter()
    call = capped.CappedCall(time.sleep, 2.0, 60)
    with pytest.raises(capped.PeerStopped, match=r"stopped at 2 s") as stopped:
        call.result()
    assert stopped.value.seconds == 2.0
    assert time.perf_counter() - started < 30, "the process must be stopped at the cap, not waited for"


def test_a_capped_call_returns_results_and_raises_errors_of_the_call(capped):
    assert capped.CappedCall(math.factorial, 60.0, 5).result() == 120
    assert capped.CappedCall(math.factorial, None, 6).result() == 720  # no cap: as long as it takes
    with pytest.raises(ValueError, match="math domain error"):
        capped.CappedCall(math.sqrt, 60.0, -1.0).result()
    with pytest.raises(RuntimeError, match=r"_exit ended without a result \(exit code 3\)"):
        capped.CappedCall(os._exit, 60.0, 3).result()
    for cap in (0, -3.0):
        with pytest.raises(ValueError, match="cap_seconds must be a positive number"):
            capped.CappedCall(math.factorial, cap, 3)
