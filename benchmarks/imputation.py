"""Time-series imputation quality and speed: our diffusion model against simple fills and PyPOTS' CSDI.

    python benchmarks/imputation.py                       # co2, macrodata, interest_inflation: trains, scores, writes
    python benchmarks/imputation.py --sources co2 --ckpt co2=runs/timeseries/<time>/checkpoints/last.ckpt

For each data set the model is trained with the default time-series config (``python -m toolkit.train
domain=timeseries domain.source=<name>`` plus the per-source settings below) unless a checkpoint is
given. Held-out windows are the validation split (the last ``val_fraction`` of each series in time),
cut ``window // 2`` apart. In each window, observed values are hidden on purpose: 10 %, 50 % and 90 %
at random, or one block of ``window/4..window/2`` steps per variable; every scenario is drawn with
``--mask-repeats`` seeds. Scores count the hidden values only, in units of each variable's training
standard deviation (so variables of different scales weigh the same):

- MAE and RMSE of the point estimate (the median of the samples for the probabilistic methods);
- CRPS estimated from the quantiles 0.05, 0.10, ..., 0.95 of the samples, as CSDI does
  (``mean_q 2 * pinball_q``); for a point estimate it equals the MAE.

Peers, each seeing the same window with the same values hidden: the mean of the window's remaining
values per variable, last observation carried forward (then the first one backward), linear
interpolation in time (pandas), and PyPOTS' CSDI (``pip install -e ".[bench-ts]" --only-binary
tokenizers``) trained on the same training windows at our batch size for PyPOTS' default 1,500
iterations, with the CSDI paper's sizes (64 channels, 4 layers, 8 heads, 50 diffusion steps). Inference
time is the wall time to draw the same number of samples for every held-out window, divided by the number
of windows.

Both models train at the same time, each on one core with one torch thread: the peer in its own process,
started first, ours in this one with the default config (early stopping on val/crps, trainer.max_steps),
and the fit table compares their wall times (ours from start to written checkpoint, validations, previews
and final samples included; the peer's PyPOTS ``fit``). So that a run ends within 30 minutes on 2 cores,
the peer's training has a time budget per data set (``PEER_FIT_BUDGETS``: 10 min for co2, 8 for macrodata, 4
for interest_inflation, past what its 1,500 iterations took on 2-core machines here): past it the peer stops at the
first iteration once an epoch has finished, keeps its best finished epoch, and its row is named "PyPOTS CSDI
(capped)" with the iterations it reached. ``--fit-budget`` gives both the same budget instead (ours as the
config's ``trainer.max_time``). A hard cap (``--peer-cap``, its training and sampling together) stops a peer
that still runs long; its row then says "stopped at".
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table, stopwatch, trained_steps, write_results  # noqa: E402
from toolkit.callbacks import time_budget  # noqa: E402
from toolkit.config import compose_config  # noqa: E402
from toolkit.domains.timeseries import Normalizer, make_windows  # noqa: E402
from toolkit.impute import Imputer  # noqa: E402
from toolkit.module import build_domain  # noqa: E402
from toolkit.train import train  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "imputation.md"
INCLUDED_RESULTS = {  # sections copied from the other time-series benchmarks' results, as they were last written
    "Scaling with the number of variables": Path(__file__).parent / "results" / "ts_scaling.md",
    "Forecasting": Path(__file__).parent / "results" / "forecasting.md",
}
SOURCE_SETTINGS = {
    "co2": [],
    # 203 quarters: short windows, dense cuts. Batch 4, measured in 5-minute fits (bench scores at 4 steps): batch 32
    # reached 283 steps, MAE above linear interpolation's in every scenario; batch 8 641 steps (val/crps 0.336), MAE
    # still above; batch 4 1,033 steps (val/crps 0.262, still falling), MAE below linear's in every scenario.
    "macrodata": ["domain.window=32", "domain.stride=2", "data.batch_size=4"],
    "interest_inflation": ["domain.window=16", "domain.stride=1"],  # 107 quarters, 21 of them held out
}
RATES = (0.1, 0.5, 0.9)
CSDI_PAPER_SIZES = {"channels": 64, "layers": 4, "heads": 8, "time_emb_dim": 128, "feature_emb_dim": 16}
QUANTILE_LEVELS = np.round(np.arange(0.05, 0.951, 0.05), 2)
BAND = (0.05, 0.95)  # the band whose coverage is reported: 90% of the true values inside it is calibrated
# The peer's training budget per data set, a safety net: PyPOTS' 1,500 iterations took 233 s (co2), 220 s (macrodata)
# and 116 s (interest_inflation) on a 2-core Intel Xeon, and about 590 s, 430 s and 230 s on an AMD EPYC machine.
PEER_FIT_BUDGETS = {"co2": "10min", "macrodata": "8min", "interest_inflation": "4min"}
PEER_CAP_SECONDS = 1200.0  # PyPOTS' CSDI, training and sampling, per data set: a safety net past its budget
PEER_ITERATIONS = 1500  # PyPOTS' CSDI default training length the issue measures against


@dataclass
class Scenario:
    """Held-out windows with values hidden on purpose: ``given`` (NaN where hidden or missing),
    ``truth`` and ``hidden`` (the cells scored), all [N, K, L]."""

    name: str
    given: np.ndarray
    truth: np.ndarray
    hidden: np.ndarray


@dataclass
class Scores:
    mae: float
    rmse: float
    crps: float


@dataclass
class MethodResult:
    name: str
    scores: dict[str, Scores] = field(default_factory=dict)
    seconds_per_window: float | None = None
    note: str = ""
    stopped_at: float | None = None  # seconds: the method ran past its time cap and was stopped
    fit_seconds: float | None = None  # training wall time
    fit_note: str = ""
    coverage: dict[str, float] = field(default_factory=dict)  # per scenario, probabilistic methods only


def hide(truth: np.ndarray, kind: str, rate: float, seed: int) -> np.ndarray:
    """Cells of ``truth`` [N, K, L] to hide: observed cells at random with probability ``rate``, or
    (kind "block") one block of window/4..window/2 steps per variable. At least one observed cell
    of each window stays given."""
    rng = np.random.default_rng(seed)
    observed = ~np.isnan(truth)
    n, k, steps = truth.shape
    if kind == "random":
        hidden = observed & (rng.random(truth.shape) < rate)
    else:
        lengths = rng.integers(steps // 4, steps // 2 + 1, size=(n, k))
        starts = rng.integers(0, steps - lengths + 1)
        pos = np.arange(steps)
        hidden = observed & (pos >= starts[..., None]) & (pos < (starts + lengths)[..., None])
    for i in range(n):
        remaining = observed[i] & ~hidden[i]
        if not remaining.any():
            cells = np.argwhere(observed[i])
            keep = cells[rng.integers(len(cells))]
            hidden[i, keep[0], keep[1]] = False
    return hidden


def scenarios(truth: np.ndarray, repeats: int) -> list[Scenario]:
    """The random-rate and block scenarios, each drawn ``repeats`` times (stacked along windows)."""
    kinds = [(f"{int(r * 100)}% random", "random", r) for r in RATES] + [("block", "block", 0.0)]
    result = []
    for number, (name, kind, rate) in enumerate(kinds):
        masks = [hide(truth, kind, rate, seed=1000 * number + r) for r in range(repeats)]
        hidden = np.concatenate(masks)
        stacked = np.concatenate([truth] * repeats)
        result.append(Scenario(name, np.where(hidden, np.nan, stacked), stacked, hidden))
    return result


def window_mean(given: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Each variable's gaps filled with the mean of its given values in the window (the training
    mean where a window has none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # windows where a variable has no given value
        means = np.nanmean(given, axis=-1, keepdims=True)
    means = np.where(np.isnan(means), fallback[None, :, None], means)
    return np.where(np.isnan(given), means, given)


def fill_along_time(given: np.ndarray, fallback: np.ndarray, fill: Callable[[pd.DataFrame], pd.DataFrame]):
    """Apply a pandas fill to every window (time down the rows); the training mean where a variable
    has no given value in the window."""
    out = np.empty_like(given)
    for i, window in enumerate(given):
        filled = fill(pd.DataFrame(window.T)).to_numpy().T
        out[i] = np.where(np.isnan(filled), fallback[:, None], filled)
    return out


def locf(given: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return fill_along_time(given, fallback, lambda frame: frame.ffill().bfill())


def linear(given: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return fill_along_time(given, fallback, lambda frame: frame.interpolate(limit_direction="both"))


def score(truth: np.ndarray, hidden: np.ndarray, std: np.ndarray, draws: np.ndarray) -> Scores:
    """Scores of ``draws`` [S, N, K, L] (S = 1 for a point estimate) on the hidden cells, in units
    of each variable's training standard deviation."""
    scale = std[None, :, None]
    target = (truth / scale)[hidden]
    draws = draws / scale[None]
    point = np.median(draws, axis=0)[hidden]
    error = point - target
    quantiles = np.quantile(draws, QUANTILE_LEVELS, axis=0)[:, hidden]  # [Q, cells]
    below = (target[None] < quantiles).astype(float)
    pinball = (quantiles - target[None]) * (below - QUANTILE_LEVELS[:, None])
    return Scores(
        mae=float(np.abs(error).mean()),
        rmse=float(np.sqrt((error**2).mean())),
        crps=float((2 * pinball).mean()),
    )


def source_config(source: str, max_steps: int | None, extra: Sequence[str] = ()):
    """The training config of ``source``: the default time-series config with its per-source settings."""
    overrides = ["domain=timeseries", f"domain.source={source}", "trainer.enable_progress_bar=false"]
    overrides += [*SOURCE_SETTINGS[source], *extra]
    if max_steps is not None:
        overrides.append(f"trainer.max_steps={max_steps}")
    return compose_config(overrides)


def coverage(truth: np.ndarray, scored: np.ndarray, draws: np.ndarray, band: Sequence[float] = BAND) -> float:
    """Share of the ``scored`` cells of ``truth`` [N, K, L] inside the ``band`` quantiles of
    ``draws`` [S, N, K, L] (bounds included)."""
    low, high = np.quantile(draws, band, axis=0)
    inside = (truth >= low) & (truth <= high)
    return float(inside[scored].mean())


def train_or_load(
    source: str, ckpt: Path | None, run_root: Path, max_steps: int | None, extra: Sequence[str] = ()
) -> tuple[Imputer, Path, float | None]:
    """The model of ``source`` and its training's wall seconds: the given checkpoint (None seconds), else one
    trained with the default config."""
    if ckpt is not None:
        return Imputer.load(ckpt), ckpt, None
    run_dir = run_root / source
    with stopwatch() as watch:
        train(source_config(source, max_steps, extra), run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    return Imputer.load(last), last, watch.seconds


@dataclass
class PeerRun:
    """PyPOTS' CSDI training and sampling in its own process (``benchmarks.pypots_peer.CappedCall``)."""

    call: object
    epochs: int
    batch: int


def start_peer(
    domain, batch: int, runs: list[Scenario], n_samples: int, seed: int, fit_seconds: float | None, cap_seconds
) -> PeerRun:
    """Start PyPOTS' CSDI on ``domain``'s training windows for its default ``PEER_ITERATIONS`` (whole epochs) at
    batch ``batch``, its training ended at ``fit_seconds`` (None: no budget), in a process stopped
    ``cap_seconds`` after the start (None: no cap); it runs while our model trains. ImportError without PyPOTS."""
    from benchmarks.pypots_peer import CappedCall, pypots_csdi, require_pypots

    require_pypots()
    train_windows = make_windows(domain.splits()[0], domain.window, domain.stride).values
    epochs = math.ceil(PEER_ITERATIONS / math.ceil(len(train_windows) / batch))
    given = np.concatenate([s.given for s in runs])
    call = CappedCall(
        pypots_csdi,
        cap_seconds,
        train_windows.transpose(0, 2, 1),
        given.transpose(0, 2, 1),
        epochs=epochs,
        n_samples=n_samples,
        seed=seed,
        batch_size=batch,
        fit_seconds=fit_seconds,
        **CSDI_PAPER_SIZES,
    )
    return PeerRun(call, epochs, batch)


def finish_peer(peer: PeerRun, runs: list[Scenario]) -> tuple[MethodResult, list | None]:
    """The peer's result once its process has ended: the draws for every scenario, or None with a result that
    says where it was stopped."""
    from benchmarks.pypots_peer import PeerStopped

    setup = f"batch {peer.batch}, CSDI paper sizes {CSDI_PAPER_SIZES}, 50 DDPM steps"
    try:
        out = peer.call.result()
    except PeerStopped as stopped:
        note = f"stopped at {stopped.seconds:.0f} s (--peer-cap) before it finished training and sampling; {setup}"
        return MethodResult("PyPOTS CSDI", note=note, stopped_at=stopped.seconds), None
    samples = out["samples"].transpose(0, 1, 3, 2)
    bounds = np.cumsum([0, *(len(s.given) for s in runs)])
    draws = [samples[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    windows = sum(len(s.given) for s in runs)
    trained = f"{out['iterations']} of {out['planned_iterations']} iterations ({peer.epochs} epochs)"
    if out["budget_stopped"]:
        trained = f"CAPPED: training stopped at its time budget after {trained}, weights of epoch {out['best_epoch']}"
    name = "PyPOTS CSDI (capped)" if out["budget_stopped"] else "PyPOTS CSDI"
    note = f"PyPOTS {out['version']}, {trained}; {setup}"
    result = MethodResult(
        name,
        seconds_per_window=out["predict_seconds"] / windows,
        note=note,
        fit_seconds=out["fit_seconds"],
        fit_note=trained,
    )
    return result, draws


def budget_seconds(budget: str) -> float | None:
    """A time budget (``--fit-budget`` or ``PEER_FIT_BUDGETS``) in seconds; 'none' is None."""
    value = None if budget.lower() == "none" else time_budget(budget)
    return None if value is None else value.total_seconds()


def held_out_scenarios(domain, repeats: int) -> tuple[list[Scenario], np.ndarray, int]:
    """The scenarios on ``domain``'s held-out windows, their time positions and the number of windows."""
    held_out = domain.splits()[1]
    windows = make_windows(held_out, domain.window, max(1, domain.window // 2))
    runs = scenarios(windows.values, repeats)
    return runs, np.concatenate([windows.time_pos] * repeats), len(windows)


def evaluate(
    imputer: Imputer, runs: list[Scenario], time_pos: np.ndarray, scale: Normalizer, args: argparse.Namespace
) -> list[MethodResult]:
    """The simple fills' and our model's scores and inference times on ``runs``; ``scale``: the training values'
    own mean and std (the fills' fallback and the scores' unit), whatever the model uses."""
    mean, std = scale.mean, scale.std
    results = [
        MethodResult("window mean", note="mean of the window's given values"),
        MethodResult("LOCF", note="last observation carried forward, then first backward"),
        MethodResult("linear interpolation", note="pandas interpolate, both directions"),
    ]
    fills = [window_mean, locf, linear]
    for scenario in runs:
        for result, fill in zip(results, fills, strict=True):
            draws = fill(scenario.given, mean)[None]
            result.scores[scenario.name] = score(scenario.truth, scenario.hidden, std, draws)
    for steps in args.steps:
        ours = MethodResult(f"ours, {args.sampler} {steps} steps", note=f"{args.n_samples} samples, batched")
        seconds = 0.0
        for scenario in runs:
            with stopwatch() as watch:
                draws = imputer.sample_windows(
                    scenario.given,
                    time_pos,
                    n_samples=args.n_samples,
                    seed=args.seed,
                    steps=steps,
                    sampler=args.sampler,
                )
            seconds += watch.seconds
            ours.scores[scenario.name] = score(scenario.truth, scenario.hidden, std, draws)
            ours.coverage[scenario.name] = coverage(scenario.truth, scenario.hidden, draws)
        ours.seconds_per_window = seconds / sum(len(s.given) for s in runs)
        results.append(ours)
    return results


def stopping_note(imputer: Imputer, ckpt: Path) -> str:
    """How our training ended: its steps, batch and what stopped it."""
    trainer = imputer.module.config["trainer"]
    steps = trained_steps(ckpt)
    batch = imputer.module.config["data"]["batch_size"]
    if trainer["max_steps"] is not None and steps >= trainer["max_steps"]:
        reason = f"trainer.max_steps {trainer['max_steps']}"
    elif trainer.get("max_time"):
        reason = f"early stopping on val/crps or trainer.max_time {trainer['max_time']}"
    else:
        reason = "early stopping on val/crps"
    return f"{steps} steps of batch {batch}, ended by {reason}"


def score_peer(peer: MethodResult, draws: list | None, runs: list[Scenario], scale: Normalizer) -> MethodResult:
    for scenario, scenario_draws in zip(runs, draws or [], strict=False):
        peer.scores[scenario.name] = score(scenario.truth, scenario.hidden, scale.std, scenario_draws)
        peer.coverage[scenario.name] = coverage(scenario.truth, scenario.hidden, scenario_draws)
    return peer


def section(source: str, ckpt: Path, imputer: Imputer, results, runs, facts, args) -> list[str]:
    config = imputer.module.config
    header = ["method", *[f"{s.name}: MAE / RMSE / CRPS" for s in runs]]
    rows = []
    for r in results:
        if r.stopped_at is not None:
            rows.append([r.name, *[f"stopped at {r.stopped_at:.0f} s"] * len(runs)])
            continue
        cells = [f"{c.mae:.3f} / {c.rmse:.3f} / {c.crps:.3f}" for c in (r.scores[s.name] for s in runs)]
        rows.append([r.name, *cells])
    timed = [r for r in results if r.seconds_per_window is not None]
    slowest = max((r.seconds_per_window for r in timed), default=None)
    time_rows = [
        [r.name, f"{1000 * r.seconds_per_window:.1f}", f"{slowest / r.seconds_per_window:.1f}x", r.note] for r in timed
    ]
    time_rows += [[r.name, f"stopped at {r.stopped_at:.0f} s", "-", r.note] for r in results if r.stopped_at]
    fitted = [r for r in results if r.fit_seconds is not None]
    ours_fit = next((r.fit_seconds for r in fitted if r.name.startswith("ours")), None)
    fit_rows = [
        [
            "ours" if r.name.startswith("ours") else r.name,
            f"{r.fit_seconds:.0f}",
            "-" if ours_fit is None else f"{r.fit_seconds / ours_fit:.2f}x",
            r.fit_note,
        ]
        for r in fitted
    ]
    fit_rows += [[r.name, f"stopped at {r.stopped_at:.0f} s", "-", r.note] for r in results if r.stopped_at]
    hidden = ", ".join(f"{name}: {count}" for name, count in facts["hidden"].items())
    lines = [
        f"## {source}",
        "",
        f"- Model: `{ckpt}` ({trained_steps(ckpt)} steps of batch {config['data']['batch_size']}; trainer.max_steps "
        f"{config['trainer']['max_steps']}, max_time {config['trainer'].get('max_time')}{facts.get('fit', '')}; "
        f"net {OmegaConf.to_container(OmegaConf.create(config['domain']['net']))}).",
        f"- Held-out: {facts['windows']} windows of {facts['window']} steps x {facts['variables']} variables, "
        f"each scenario drawn {args.mask_repeats} times; hidden cells scored: {hidden}.",
        "- Scores in training standard deviations; lower is better.",
        "",
        *markdown_table(header, rows),
        "",
        f"Inference, {args.n_samples} samples per window:",
        "",
        *markdown_table(["method", "ms per window", "speed-up vs slowest", "notes"], time_rows, "lrrl"),
        "",
    ]
    calibrated = [r for r in results if r.coverage]
    if calibrated:
        band = f"{BAND[0]:.0%}-{BAND[1]:.0%}"
        lines += [
            f"Share of the hidden values inside the {band} band of the samples ({BAND[1] - BAND[0]:.0%} is calibrated; "
            "below: the band is too narrow):",
            "",
            *markdown_table(
                ["method", *(s.name for s in runs)],
                [[r.name, *(f"{100 * r.coverage[s.name]:.0f}%" for s in runs)] for r in calibrated],
                "l" + "r" * len(runs),
            ),
            "",
        ]
    if fit_rows:
        lines += [
            "Training, each on one core, at the same time (wall seconds, ours: `train` from start to the written "
            "checkpoint, validations, previews and final samples included; the peer: PyPOTS' `fit`):",
            "",
            *markdown_table(["method", "fit wall s", "time / ours", "notes"], fit_rows, "lrrl"),
            "",
        ]
    return lines


def included_section(title: str, path: Path) -> list[str]:
    """Another benchmark's results file as a section of this one: its lines below its own title, headings one
    level deeper, and where it came from (that file's own date and reproduce line stay in it)."""
    if not path.exists():
        return [f"## {title}", "", f"Not included: `{path.name}` has not been written yet.", ""]
    lines = path.read_text().splitlines()[1:]
    deeper = ["#" + line if line.startswith("#") else line for line in lines]
    source = f"From `benchmarks/results/{path.name}` (its own run, copied here as written):"
    return [f"## {title}", "", source, *deeper, ""]


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", nargs="+", default=list(SOURCE_SETTINGS), choices=list(SOURCE_SETTINGS))
    parser.add_argument("--ckpt", nargs="*", default=[], help="SOURCE=PATH: score this checkpoint instead of training")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--override", nargs="*", default=[], help="training config KEY=VALUE for every source")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", nargs="+", type=int, default=[4], help="sampler steps for our rows (config: 4)")
    parser.add_argument("--n-samples", type=int, default=20)
    parser.add_argument("--mask-repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="run PyPOTS' CSDI")
    parser.add_argument(
        "--fit-budget",
        default=None,
        help="training time budget of ours (trainer.max_time) and of the peer, for every data set: seconds, '90s', "
        f"'5min'; default 'none': ours trains with the config's defaults (early stopping, max_steps), the peer its "
        f"{PEER_ITERATIONS} iterations within {PEER_FIT_BUDGETS}",
    )
    parser.add_argument(
        "--peer-cap",
        type=float,
        default=PEER_CAP_SECONDS,
        help="seconds before PyPOTS' CSDI (training and sampling) is stopped, per data set; 0: no cap",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument(
        "--include-other",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append the scaling (ts_scaling.md) and forecasting (forecasting.md) results as sections",
    )
    parser.add_argument("--run-root", type=Path, default=Path("runs/bench_imputation"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.peer_cap < 0:
        parser.error(f"--peer-cap must be a number of seconds >= 0 (0: no cap), got {args.peer_cap}")
    args.fit_budgets = {source: args.fit_budget or "none" for source in args.sources}
    if args.fit_budget is not None and args.fit_budget.lower() != "none":
        try:
            time_budget(args.fit_budget)
        except ValueError as error:
            parser.error(f"--fit-budget: {error}")
    torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.ckpt)
    unknown = set(checkpoints) - set(args.sources)
    if unknown:
        parser.error(f"--ckpt names sources not benchmarked: {sorted(unknown)}")
    body = ["", "\n\n".join(__doc__.split("\n\n")[2:]).strip(), ""]  # a paragraph, not part of the header list
    for source in args.sources:
        given = Path(checkpoints[source]) if source in checkpoints else None
        fit_budget = args.fit_budgets[source]
        extra = [*([] if fit_budget.lower() == "none" else [f"trainer.max_time={fit_budget}"]), *args.override]
        config = source_config(source, args.max_steps, extra)
        loaded = Imputer.load(given) if given else None
        domain = loaded.domain if loaded else build_domain(OmegaConf.to_container(config.domain, resolve=True))
        runs, time_pos, n_windows = held_out_scenarios(domain, args.mask_repeats)
        scale = Normalizer.fit(domain.splits()[0])
        peer = None
        if args.peer:
            batch = int(loaded.module.config["data"]["batch_size"] if loaded else config.data.batch_size)
            peer_budget = budget_seconds(fit_budget if fit_budget.lower() != "none" else PEER_FIT_BUDGETS[source])
            try:
                peer = start_peer(domain, batch, runs, args.n_samples, args.seed, peer_budget, args.peer_cap or None)
            except ImportError as error:
                print(f"PyPOTS CSDI skipped: {error}")
        imputer, ckpt, fit_seconds = train_or_load(source, given, args.run_root, args.max_steps, extra)
        results = evaluate(imputer, runs, time_pos, scale, args)
        if fit_seconds is not None:
            ours = results[len(results) - len(args.steps)]
            ours.fit_seconds = fit_seconds
            ours.fit_note = stopping_note(imputer, ckpt)
        if peer is not None:
            results.append(score_peer(*finish_peer(peer, runs), runs, scale))
        facts = {
            "windows": n_windows,
            "variables": len(domain.columns),
            "window": domain.window,
            "hidden": {s.name: int(s.hidden.sum()) for s in runs},
            "fit": "" if fit_seconds is None else f", trained in {fit_seconds:.0f} s wall",
        }
        lines = section(source, ckpt, imputer, results, runs, facts, args)
        print("\n".join(lines))
        body += lines
    if args.include_other:
        for title, path in INCLUDED_RESULTS.items():
            body += included_section(title, path)
    command = "python benchmarks/imputation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results(args.out, "Time-series imputation", command.strip(), body)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
