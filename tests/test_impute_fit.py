"""Fitting that stops when it has learned: the time budget (``Imputer.fit(time_budget=...)``,
``trainer.max_time``), the held-out imputation score ``val/crps`` and early stopping on it."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pandas as pd
import pytest
from test_impute import TINY_NET, WINDOW

from toolkit.callbacks import time_budget, trainer_arguments
from toolkit.domains.timeseries import synthetic_frames
from toolkit.impute import Imputer
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
