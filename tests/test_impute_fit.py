"""Fitting that stops when it has learned: the time budget (``Imputer.fit(time_budget=...)``,
``trainer.max_time``), the held-out imputation score ``val/crps`` and early stopping on it."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import IMPUTER_WINDOW as WINDOW
from conftest import TINY_IMPUTER as TINY_NET

from toolkit.callbacks import ImputationCRPS, sample_crps, time_budget, trainer_arguments, training_callbacks
from toolkit.domains.timeseries import synthetic_frames
from toolkit.impute import Imputer
from toolkit.impute.imputer import stopping_settings
from toolkit.module import read_checkpoint

FIT = {"window": WINDOW, "stride": 4, "batch_size": 16, **TINY_NET}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return synthetic_frames(num_series=2, length=120, num_features=2, seed=0)[0]


def trained_steps(run_dir) -> int:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]


# ----------------------------------------------------------------------------- time budget


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        (1.5, 1.5),
        ("90s", 90),
        ("2min", 120),
        ("2 min", 120),
        ("1.5h", 5400),
        ("1d", 86400),
        ("45", 45),
        ("00:01:00:30", 3630),
        (datetime.timedelta(minutes=3), 180),
    ],
)
def test_time_budget_reads_seconds_units_and_lightning_format(value, seconds):
    assert time_budget(value) == datetime.timedelta(seconds=seconds)
    assert time_budget(None) is None


@pytest.mark.parametrize("value", ["soon", "2 fortnights", "-5s", 0, -1, float("inf"), "1:2", True, [60]])
def test_a_bad_time_budget_is_an_error_saying_what_is_accepted(value):
    with pytest.raises(ValueError, match=r"time budget \(trainer.max_time\) must be seconds .* \"2min\""):
        time_budget(value)


def test_trainer_arguments_hand_lightning_a_timedelta():
    assert trainer_arguments({"max_steps": 5, "max_time": "2min"}) == {
        "max_steps": 5,
        "max_time": datetime.timedelta(minutes=2),
    }
    assert trainer_arguments({"max_steps": 5, "max_time": None}) == {"max_steps": 5}


def test_fit_stops_at_its_time_budget(frames, tmp_path):
    Imputer.fit(frames, max_steps=100_000, time_budget="3s", run_dir=tmp_path, **FIT)
    assert 0 < trained_steps(tmp_path) < 100_000


def test_fit_rejects_a_bad_or_conflicting_time_budget_before_training(frames):
    with pytest.raises(ValueError, match="time budget"):
        Imputer.fit(frames, time_budget="soon", **FIT)
    with pytest.raises(ValueError, match=r"time_budget='2min' and the config key trainer.max_time='5min' disagree"):
        Imputer.fit(frames, time_budget="2min", **{"trainer.max_time": "5min"}, **FIT)


def test_train_cli_reports_a_bad_max_time_as_one_error_line(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.train",
            "domain=timeseries",
            "domain.source=synthetic",
            "trainer.max_time=soon",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "error: time budget (trainer.max_time) must be seconds" in run.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- val/crps and stopping


def test_sample_crps_of_known_ensembles():
    truth = torch.zeros(3)
    weight = torch.ones(3)
    assert sample_crps(torch.zeros(4, 3), truth, weight) == 0
    assert sample_crps(torch.full((1, 3), 2.0), truth, weight) == 2  # a point forecast: its absolute error
    assert sample_crps(torch.tensor([[1.0] * 3, [-1.0] * 3]), truth, weight) == pytest.approx(0.5)
    assert sample_crps(torch.tensor([[1.0, 5.0, 5.0]]), truth, torch.tensor([1.0, 0, 0])) == 1  # weighted cells only


def logged(run_dir, column: str) -> pd.Series:
    metrics = pd.read_csv(next((run_dir / "logs").glob("version_*/metrics.csv")))
    return metrics[column].dropna()


def test_fit_logs_val_crps_at_every_validation_and_shows_it(frames, tmp_path, capfd):
    Imputer.fit(frames, max_steps=20, run_dir=tmp_path, **{"trainer.val_check_interval": 10}, **FIT)
    scores = logged(tmp_path, "val/crps")
    assert len(scores) == 2 and (scores > 0).all()
    assert "val/crps=" in capfd.readouterr().out  # the progress bar (Lightning's, on stdout)


def test_fit_stops_early_when_val_crps_stops_improving(frames, tmp_path):
    overrides = {"trainer.val_check_interval": 5, "early_stopping.min_delta": 1e9}  # nothing counts as better
    Imputer.fit(frames, max_steps=200, run_dir=tmp_path, patience=1, progress=False, **overrides, **FIT)
    assert trained_steps(tmp_path) == 10  # the first validation sets the best, the second does not beat it
    assert len(logged(tmp_path, "val/crps")) == 2


def test_stopping_keywords_and_config():
    assert stopping_settings(None, None, {}) == {}
    assert stopping_settings(False, None, {}) == {"early_stopping.patience": None}
    assert stopping_settings(None, 2, {}) == {"early_stopping.patience": 2}
    assert stopping_settings(True, None, {})["early_stopping.patience"] >= 1
    with pytest.raises(ValueError, match="early_stopping=False and patience=2 contradict"):
        stopping_settings(False, 2, {})
    with pytest.raises(ValueError, match="patience=2 and the config key early_stopping.patience=3 disagree"):
        stopping_settings(True, 2, {"early_stopping.patience": 3})
    with pytest.raises(ValueError, match="monitor=val/crps needs val_crps"):
        training_callbacks({"early_stopping": {"patience": 2, "monitor": "val/crps"}})
    with pytest.raises(ValueError, match="val_crps.samples must be a whole number >= 2"):
        ImputationCRPS(samples=1)
    found = training_callbacks({"val_crps": {"windows": 4}, "early_stopping": {"patience": 2, "monitor": "val/crps"}})
    assert [type(c).__name__ for c in found][-2:] == ["EarlyStopping", "ImputationCRPS"]
    assert found[-2].monitor == "val/crps"
