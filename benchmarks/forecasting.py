"""Forecasting benchmark: the Imputer's forecasts against seasonal naive and exponential smoothing (ETS).

    python benchmarks/forecasting.py                      # co2 and macrodata, trained here
    python benchmarks/forecasting.py --quick              # a smoke run with a tiny model

Each embedded series (weekly Mauna Loa CO2, season 52; quarterly US macrodata, 12 variables, season
4) is cut where the time-series domain cuts it: the first 80% trains the model (``Imputer.fit`` with
the default config and the per-source settings of benchmarks/imputation.py, but fewer training steps
than the config's 2,000 so that the run fits in about 15 minutes on 2 shared cores: 1,000 for CO2,
1,000 of batch 4 for macrodata, whose 12 variables make each step ~6x dearer; ``--max-steps``), the last 20% is held
out. Forecast origins are spread evenly over the held-out tail; at each origin every method sees the
series up to the origin and forecasts the next ``H`` steps:

- ours: ``Imputer.forecast`` on the last ``window - H`` steps before the origin (the one window that
  holds the future; longer history would only be imputed again), ``--n-samples`` samples, seed fixed;
- seasonal naive: the value one season earlier (the history's gaps linearly interpolated);
- ETS: statsmodels' ``ETSModel`` with additive errors, additive damped trend and additive
  seasonality, fitted per variable on the whole gap-interpolated history before the origin (initial
  states by statsmodels' heuristic; estimating them takes ~6 s per fit on CO2's 52 seasonal states),
  and as many simulated paths as our samples.

Scores per horizon h = 1..H and their mean, on observed future values only, in units of each
variable's training standard deviation, with benchmarks/imputation.py's ``score``: MAE of the median
and CRPS from the quantiles 0.05, ..., 0.95 of the samples (for seasonal naive, a point forecast,
CRPS = MAE). Coverage: the share of true values inside the 5-95% band of the samples (0.90 is
calibrated; below means the band is too narrow, above too wide).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table, stopwatch, write_results  # noqa: E402
from benchmarks.imputation import SOURCE_SETTINGS, Scores, coverage, score  # noqa: E402
from toolkit.domains.timeseries import co2_frame, macrodata_frame  # noqa: E402
from toolkit.impute import Imputer  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "forecasting.md"
HELD_OUT_FRACTION = 0.2  # the time-series domain's default val_fraction
QUICK_NET = {
    "domain.net.channels": 8,
    "domain.net.layers": 1,
    "domain.net.heads": 2,
    "domain.net.time_emb_dim": 8,
    "domain.net.feature_emb_dim": 4,
}


@dataclass(frozen=True)
class Source:
    load: Callable[[], pd.DataFrame]
    season: int
    horizon: int
    unit: str
    max_steps: int  # training steps by default: what fits the run's time budget on 2 shared cores
    origins: int


SOURCES = {
    "co2": Source(co2_frame, season=52, horizon=26, unit="weeks", max_steps=1000, origins=24),
    # 12 variables cost ~6x CO2's per sample; at batch 4 (imputation.py's setting) ~0.3 s per step on one thread
    "macrodata": Source(macrodata_frame, season=4, horizon=8, unit="quarters", max_steps=1000, origins=12),
}


@dataclass
class MethodResult:
    """Scores of one method: per horizon (index h - 1) and over all horizons."""

    name: str
    per_horizon: list[Scores]
    overall: Scores
    coverage: list[float] | None = None  # per horizon, probabilistic methods only
    overall_coverage: float | None = None
    seconds: float = 0.0


@dataclass
class Task:
    """The origins of one series: ``truth`` [O, K, H] (NaN where not observed) and the gap-filled
    history each origin sees."""

    frame: pd.DataFrame
    cut: int
    origins: list[int]
    horizon: int
    truth: np.ndarray
    std: np.ndarray
    facts: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- setup


def split_point(rows: int, fraction: float = HELD_OUT_FRACTION) -> int:
    """The first held-out row, as ``split_by_time`` cuts a series."""
    return rows - min(max(int(round(rows * fraction)), 1), rows - 1)


def spread_origins(cut: int, rows: int, horizon: int, count: int) -> list[int]:
    """``count`` origins (first forecast row) spread evenly over ``[cut, rows - horizon]``, so that
    every forecast lies in the held-out tail and has its truth."""
    last = rows - horizon
    if last < cut:
        raise ValueError(f"the held-out tail ({rows - cut} rows) is shorter than the horizon {horizon}")
    return sorted({int(round(x)) for x in np.linspace(cut, last, min(count, last - cut + 1))})


def make_task(frame: pd.DataFrame, horizon: int, count: int) -> Task:
    rows = len(frame)
    cut = split_point(rows)
    origins = spread_origins(cut, rows, horizon, count)
    values = frame.to_numpy(dtype=float)
    truth = np.stack([values[t : t + horizon].T for t in origins])
    std = np.nanstd(values[:cut], axis=0)
    return Task(frame, cut, origins, horizon, truth, np.where(std > 0, std, 1.0))


def fit_settings(source: str) -> dict:
    """benchmarks/imputation.py's per-source training overrides as ``Imputer.fit`` config keys."""
    pairs = (setting.split("=", 1) for setting in SOURCE_SETTINGS[source])
    return {key: OmegaConf.from_dotlist([f"value={value}"])["value"] for key, value in pairs}


def fit_or_load(source: str, train: pd.DataFrame, ckpt: Path | None, args) -> tuple[Imputer, float]:
    """The model of ``source``: the given checkpoint, else one fitted on ``train``; and the fit's
    wall time (0 for a checkpoint)."""
    if ckpt is not None:
        return Imputer.load(ckpt), 0.0
    overrides = {**fit_settings(source), **(QUICK_NET if args.quick else {})}
    with stopwatch() as watch:
        max_steps = args.max_steps or SOURCES[source].max_steps
        imputer = Imputer.fit(train, max_steps=max_steps, seed=args.seed, **overrides)
    return imputer, watch.seconds


# ----------------------------------------------------------------------------- methods


def history_filled(frame: pd.DataFrame, origin: int) -> np.ndarray:
    """Rows before ``origin`` [T, K] with gaps linearly interpolated (ends carried), from the
    history alone."""
    return frame.iloc[:origin].interpolate(limit_direction="both").to_numpy(dtype=float)


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """[K, H]: each step's value one season earlier (whole seasons back when h > season)."""
    h = np.arange(1, horizon + 1)
    lag = season * -(-h // season)
    return history[len(history) + h - 1 - lag].T


def ets_paths(history: np.ndarray, horizon: int, season: int, n_samples: int, seed: int) -> np.ndarray:
    """[S, K, H]: simulated future paths of an additive ETS with damped trend and season, fitted
    per variable."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    paths = []
    for k in range(history.shape[1]):
        model = ETSModel(
            history[:, k],
            error="add",
            trend="add",
            damped_trend=True,
            seasonal="add",
            seasonal_periods=season,
            initialization_method="heuristic",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes of the optimiser
            fitted = model.fit(disp=False)
            drawn = fitted.simulate(horizon, anchor="end", repetitions=n_samples, rng=np.random.default_rng([seed, k]))
        paths.append(np.asarray(drawn).reshape(horizon, n_samples).T)
    return np.stack(paths, axis=1)


def model_samples(imputer: Imputer, task: Task, args) -> np.ndarray:
    """[S, O, K, H]: ``Imputer.forecast`` at every origin, all origins in one call (a dict of
    frames, one per origin, each the ``window - H`` steps before it)."""
    context = imputer.window - task.horizon
    histories = {t: task.frame.iloc[max(0, t - context) : t] for t in task.origins}
    results = imputer.forecast(histories, task.horizon, n_samples=args.n_samples, seed=args.seed, steps=args.steps)
    future = [results[t].samples[:, -task.horizon :] for t in task.origins]  # [S, H, K] each
    return np.stack(future, axis=1).transpose(0, 1, 3, 2)


# ----------------------------------------------------------------------------- scoring


def horizon_masks(truth: np.ndarray) -> list[np.ndarray]:
    """Per horizon step, the observed cells of ``truth`` [O, K, H] at that step."""
    observed = ~np.isnan(truth)
    steps = np.arange(truth.shape[-1])
    return [observed & (steps == h) for h in steps]


def evaluate(name: str, task: Task, draws: np.ndarray, seconds: float, probabilistic: bool) -> MethodResult:
    """Scores of ``draws`` [S, O, K, H] per horizon and overall."""
    masks = horizon_masks(task.truth)
    observed = ~np.isnan(task.truth)
    result = MethodResult(
        name,
        per_horizon=[score(task.truth, m, task.std, draws) for m in masks],
        overall=score(task.truth, observed, task.std, draws),
        seconds=seconds,
    )
    if probabilistic:
        result.coverage = [coverage(task.truth, m, draws) for m in masks]
        result.overall_coverage = coverage(task.truth, observed, draws)
    return result


def run_source(source: str, ckpt: Path | None, args) -> tuple[list[MethodResult], Task]:
    spec = SOURCES[source]
    horizon = args.horizon or spec.horizon
    task = make_task(spec.load(), horizon, args.origins or spec.origins)
    print(f"{source}: {len(task.origins)} origins, horizon {horizon}; fitting the model", flush=True)
    imputer, fit_seconds = fit_or_load(source, task.frame.iloc[: task.cut], ckpt, args)
    print(f"{source}: fitted in {fit_seconds:.0f} s; forecasting", flush=True)
    if horizon >= imputer.window:
        raise ValueError(f"{source}: horizon {horizon} must be shorter than the model's window {imputer.window}")
    with stopwatch() as watch:
        ours = model_samples(imputer, task, args)
    results = [evaluate("ours", task, ours, watch.seconds, probabilistic=True)]
    histories = [history_filled(task.frame, t) for t in task.origins]
    with stopwatch() as watch:
        paths = [ets_paths(h, horizon, spec.season, args.n_samples, args.seed + i) for i, h in enumerate(histories)]
    results.append(evaluate("ETS (damped, additive)", task, np.stack(paths, axis=1), watch.seconds, True))
    naive = np.stack([seasonal_naive(h, horizon, spec.season) for h in histories])[None]
    results.append(evaluate(f"seasonal naive ({spec.season})", task, naive, 0.0, probabilistic=False))
    config = imputer.module.config
    task.facts = {
        "fit_seconds": fit_seconds,
        "ckpt": str(ckpt) if ckpt else None,
        "max_steps": config["trainer"]["max_steps"],
        "batch": config["data"]["batch_size"],
        "window": imputer.window,
        "sampler": f"{config['sampler']['method']} {args.steps or config['sampler']['steps']} steps",
        "variables": len(imputer.columns),
    }
    return results, task


# ----------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def findings(results: list[MethodResult], task: Task) -> list[str]:
    """Plain statements of where ours wins and loses, from the numbers."""
    ours, ets, naive = results
    lines = []
    for peer in (ets, naive):
        wins = [h + 1 for h, (a, b) in enumerate(zip(ours.per_horizon, peer.per_horizon)) if a.crps < b.crps]
        lines.append(
            f"- CRPS against {peer.name}: ours/peer = {ratio(ours.overall.crps, peer.overall.crps)} over all horizons "
            f"(MAE {ratio(ours.overall.mae, peer.overall.mae)}); ours lower at {len(wins)} of {task.horizon} horizons"
            + (f" ({compact(wins)})" if wins else "")
            + "."
        )
    for r in (ours, ets):
        band = r.coverage
        lines.append(
            f"- {r.name}: the 5-95% band holds {100 * r.overall_coverage:.0f}% of the true values (90% is calibrated; "
            f"{100 * min(band):.0f}-{100 * max(band):.0f}% across horizons)."
        )
    return lines


def compact(numbers: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"h = 1-3, 5"``."""
    runs, start = [], numbers[0]
    for prev, cur in zip(numbers, [*numbers[1:], None]):
        if cur != prev + 1:
            runs.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = cur
    return "h = " + ", ".join(runs)


def section(source: str, results: list[MethodResult], task: Task, args) -> list[str]:
    spec, facts = SOURCES[source], task.facts
    ours, ets, naive = results
    header = ["h", "ours MAE / CRPS", "ETS MAE / CRPS", "naive MAE", "ours / ETS CRPS", "ours / naive CRPS"]
    header += ["ours 5-95%", "ETS 5-95%"]

    def row(label, o: Scores, e: Scores, n: Scores, cov_o: float, cov_e: float):
        return [
            label,
            f"{o.mae:.3f} / {o.crps:.3f}",
            f"{e.mae:.3f} / {e.crps:.3f}",
            f"{n.mae:.3f}",
            ratio(o.crps, e.crps),
            ratio(o.crps, n.crps),
            f"{100 * cov_o:.0f}%",
            f"{100 * cov_e:.0f}%",
        ]

    rows = [
        row(h + 1, ours.per_horizon[h], ets.per_horizon[h], naive.per_horizon[h], ours.coverage[h], ets.coverage[h])
        for h in range(task.horizon)
    ]
    rows.append(row("**mean**", ours.overall, ets.overall, naive.overall, ours.overall_coverage, ets.overall_coverage))
    model = f"`{facts['ckpt']}`" if facts["ckpt"] else f"fitted here in {facts['fit_seconds']:.0f} s"
    first, last = task.frame.index[task.origins[0]], task.frame.index[task.origins[-1]]
    return [
        f"## {source}",
        "",
        f"- Series: {len(task.frame)} {spec.unit} x {facts['variables']} variable(s); training rows 1-{task.cut}, "
        f"held out {len(task.frame) - task.cut}; season {spec.season}.",
        f"- Model: {model} ({facts['max_steps']} steps of batch {facts['batch']}, window {facts['window']}); "
        f"sampler {facts['sampler']}, {args.n_samples} samples, seed {args.seed}; context "
        f"{facts['window'] - task.horizon} steps before each origin.",
        f"- {len(task.origins)} origins from {first:%Y-%m-%d} to {last:%Y-%m-%d}, horizons 1-{task.horizon} "
        f"{spec.unit}; {int((~np.isnan(task.truth)).sum())} observed future values scored.",
        f"- Forecast wall time for all origins: ours {ours.seconds:.1f} s ({args.n_samples} samples each, batched), "
        f"ETS {ets.seconds:.1f} s (fits and {args.n_samples} paths per variable).",
        "",
        "Scores in training standard deviations (lower is better); coverage of the 5-95% band (90% is calibrated):",
        "",
        *markdown_table(header, rows),
        "",
        "Findings:",
        "",
        *findings(results, task),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--ckpt", nargs="*", default=[], help="SOURCE=PATH: forecast with this checkpoint, no fit")
    parser.add_argument("--horizon", type=int, default=None, help="steps ahead (default: co2 26, macrodata 8)")
    parser.add_argument("--origins", type=int, default=None, help="origins per series (default: co2 24, macrodata 12)")
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's config)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="training steps (default: co2 1000, macrodata 1000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 10 steps, 3 origins, 4 samples")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_steps = args.max_steps or 10
        args.origins, args.n_samples, args.steps = 3, 4, args.steps or 2
    torch.set_num_threads(args.threads)
    checkpoints = {name: Path(path) for name, path in (item.split("=", 1) for item in args.ckpt)}
    unknown = set(checkpoints) - set(args.sources)
    if unknown:
        parser.error(f"--ckpt names sources not benchmarked: {sorted(unknown)}")

    load_before, started = os.getloadavg(), time.perf_counter()
    sections = []
    for source in args.sources:
        results, task = run_source(source, checkpoints.get(source), args)
        lines = section(source, results, task, args)
        print("\n".join(lines), flush=True)
        sections += lines
    wall, load_after = time.perf_counter() - started, os.getloadavg()
    command = "python benchmarks/forecasting.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = [
        f"- Wall time: {wall / 60:.1f} min for the whole run (fits included), torch at {args.threads} thread(s).",
        f"- Load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} on {os.cpu_count()} CPUs: other jobs shared the machine, so "
        "compare times within this run only.",
        "",
        "\n\n".join(__doc__.split("\n\n")[2:]).strip(),
        "",
        *sections,
    ]
    path = write_results(args.out, "Time-series forecasting", command.strip(), body)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
