"""Our samplers side by side with diffusers' schedulers, on exact Gaussian-mixture denoisers.

Accuracy: every sampler draws N points of a known Gaussian mixture (the 2-D and 16-D mixtures of
the core tests) through the same exact denoiser E[x0 | x_t], from the same initial noise, at 5 to
1000 denoiser evaluations (NFE, counted with a wrapper, not assumed). Two errors per run: the
Frechet distance of the samples to the mixture's true mean and covariance, and the total variation
between the share of samples per component and the true weights; each next to its floor, the same
error of N exact draws. diffusers' schedulers run on DDPM's linear betas (1e-4 to 0.02 over 1000
steps) with x0 prediction ("sample"); each is tried in several timestep spacings and keeps its
best. Ours run on the continuous-time version of the same betas (schedule "linear") with each
method's default spacing; their other spacings are listed next to diffusers' configurations.
Ours also run on grids tuned by ``toolkit.core.tune`` on 256 other noise draws (NFE <= 50).

Overhead: the CPU time each sampler spends outside the denoiser (which returns a precomputed
tensor), float32, one thread, median of repeats: the fixed cost of a call and the cost per step.
All times are process CPU time, which other jobs on a shared machine disturb less than wall time.

    pip install -c constraints.txt -e ".[bench]" && python benchmarks/samplers.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from toolkit.core import sampler, schedule, tune
from toolkit.core.mixture import GaussianMixture, frechet_distance

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "heun", "euler", "dpmpp_3m", "unipc")
# Our methods also run on tuned grids, tuned on other noise draws than the evaluation's.
TUNED = ("unipc", "dpmpp_2m")
TUNED_MAX_NFE = 50
TUNE_SEED = 1_000_000
TUNE_DRAWS = 256
NFES = (5, 10, 20, 50, 100, 1000)
QUICK_NFES = (5, 10, 20)
DIMS = (2, 16)
COMPONENTS = 3
# 20000 samples per run would take about half an hour on 2 shared cores; 5000 keep the run under
# 10 minutes with floors well below the differences at 5 to 20 NFE.
SAMPLES = 5000
QUICK_SAMPLES = 1000
FLOOR_DRAWS = 5
SEED = 0
OVERHEAD_SHAPES = ((64, 3, 32, 32), (1024, 16))
OVERHEAD_STEPS = 20
# From this many evaluations on, every sampler should sit at the floor: the check that the drivers are right.
CONVERGED_NFE = 500
DEFAULT_OUT = Path(__file__).parent / "results" / "samplers.md"
REPRODUCE = 'pip install -c constraints.txt -e ".[bench]" && python benchmarks/samplers.py'

# DDPM's training schedule, set explicitly for every diffusers scheduler; the denoiser hands them x0.
TRAINING_BETAS = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "prediction_type": "sample",
}
SCHEDULER_OPTIONS = {
    "DDIMScheduler": {"clip_sample": False, "set_alpha_to_one": True},
    "DPMSolverMultistepScheduler": {"solver_order": 2, "algorithm_type": "dpmsolver++"},
    "EulerDiscreteScheduler": {},
    "HeunDiscreteScheduler": {},
    "UniPCMultistepScheduler": {},
}
SHORT_NAMES = {
    "DDIMScheduler": "DDIM",
    "DPMSolverMultistepScheduler": "DPM++2M",
    "EulerDiscreteScheduler": "Euler",
    "HeunDiscreteScheduler": "Heun",
    "UniPCMultistepScheduler": "UniPC",
}
# Our method each diffusers scheduler is timed against (UniPC: the other multistep solver).
OVERHEAD_PAIRS = (
    ("ddim", "DDIMScheduler"),
    ("dpmpp_2m", "DPMSolverMultistepScheduler"),
    ("unipc", "UniPCMultistepScheduler"),
    ("euler", "EulerDiscreteScheduler"),
    ("heun", "HeunDiscreteScheduler"),
    ("ddpm", None),
)


@dataclass(frozen=True)
class PeerConfig:
    """One diffusers scheduler configuration: a timestep spacing and optionally a sigma schedule
    (``karras``: EDM's rho = 7 spacing; ``lu``: uniform in log-SNR, DPM-Solver's choice)."""

    scheduler: str
    spacing: str
    sigmas: str = "default"

    @property
    def name(self) -> str:
        label = self.spacing if self.sigmas == "default" else f"{self.sigmas} sigmas"
        return f"{SHORT_NAMES[self.scheduler]}, {label}"

    def build(self):
        import diffusers

        options = {**TRAINING_BETAS, **SCHEDULER_OPTIONS[self.scheduler], "timestep_spacing": self.spacing}
        if self.sigmas == "karras":
            options["use_karras_sigmas"] = True
        elif self.sigmas == "lu":
            options["use_lu_lambdas"] = True
        return getattr(diffusers, self.scheduler)(**options)


def _configs(scheduler: str, *sigma_schedules: str) -> tuple[PeerConfig, ...]:
    """The three timestep spacings, then the sigma schedules (which span the whole training range
    whatever the spacing, so each is tried once). The first is the reference for driver checks."""
    plain = tuple(PeerConfig(scheduler, s) for s in ("trailing", "linspace", "leading"))
    return plain + tuple(PeerConfig(scheduler, "linspace", sigmas) for sigmas in sigma_schedules)


PEER_CONFIGS: dict[str, tuple[PeerConfig, ...]] = {
    "DDIMScheduler": _configs("DDIMScheduler"),
    "DPMSolverMultistepScheduler": _configs("DPMSolverMultistepScheduler", "karras", "lu"),
    "EulerDiscreteScheduler": _configs("EulerDiscreteScheduler", "karras"),
    "HeunDiscreteScheduler": _configs("HeunDiscreteScheduler", "karras"),
    "UniPCMultistepScheduler": _configs("UniPCMultistepScheduler", "karras"),
}


class Counted:
    """A callable that counts how often it is called (one call = one batched denoiser evaluation)."""

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs) -> Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


# A denoiser for diffusers' loops: (VP state x_t, alpha_bar of that state) -> x0_hat.
VPDenoiser = Callable[[Tensor, float], Tensor]


def mixture_vp_denoiser(gm: GaussianMixture) -> VPDenoiser:
    """The exact E[x0 | x_t] of ``gm`` for ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``."""

    def denoise(x_t: Tensor, alpha_bar: float) -> Tensor:
        n = x_t.shape[0]
        alpha = torch.full((n,), math.sqrt(alpha_bar), dtype=torch.float64)
        sigma = torch.full((n,), math.sqrt(1.0 - alpha_bar), dtype=torch.float64)
        return gm.posterior_mean(x_t.to(torch.float64), alpha, sigma).to(x_t.dtype)

    return denoise


def current_alpha_bar(scheduler, timestep: Tensor) -> float:
    """alpha_bar of the state the scheduler is about to update. DDIM works on the integer training
    grid; the others keep their own ``sigmas`` (VE noise levels, Karras or Lu values included, so
    the rounding of their timesteps does not matter), of which alpha_bar is 1 / (1 + sigma^2)."""
    if not hasattr(scheduler, "sigmas"):
        return float(scheduler.alphas_cumprod[int(timestep)])
    index = scheduler.step_index if scheduler.step_index is not None else scheduler.index_for_timestep(timestep)
    sigma = float(scheduler.sigmas[index])
    return 1.0 / (1.0 + sigma**2)


def run_peer(config: PeerConfig, steps: int, denoise: VPDenoiser, noise: Tensor) -> Tensor:
    """The loop of a diffusers pipeline: ``scale_model_input`` turns the scheduler's state into the
    VP x_t a network sees (Euler and Heun keep x / alpha), the denoiser's x0 goes to ``step``."""
    scheduler = config.build()
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_vp = scheduler.scale_model_input(x, t)
        x = scheduler.step(denoise(x_vp, current_alpha_bar(scheduler, t)), t, x).prev_sample
    return x


def run_ours(
    method: str,
    steps: int,
    denoiser: Callable[..., Tensor],
    sched,
    n: int,
    dim: int,
    spacing: str | None = None,
    times: Sequence[float] | None = None,
    seed: int = SEED,
) -> Tensor:
    """Our sampler from the noise of ``seed`` (the benchmark's by default); ``spacing`` None: the
    method's default spacing and last noise level, a name: that spacing down to noise level 0.002,
    ``times``: a tuned grid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the few-steps advice: few steps are what is measured here
        return sampler.sample(
            denoiser, (n, dim), sched, method, steps, seed=seed, spacing=spacing, times=times, dtype=torch.float64
        )


def initial_noise(n: int, dim: int, seed: int = SEED) -> Tensor:
    """The noise ``sampler.sample`` starts from with ``seed`` (the benchmark's by default), handed to
    diffusers too."""
    return sampler.NoiseSource(sampler.seeds_for(seed, n), (dim,), "cpu", torch.float64)()


@functools.cache
def our_evaluations(method: str, spacing: str | None, schedule_name: str, steps: int) -> int:
    zero = Counted(lambda x, t, **_: torch.zeros_like(x))
    run_ours(method, steps, zero, schedule.get(schedule_name), 1, 1, spacing)
    return zero.calls


@functools.cache
def peer_evaluations(config: PeerConfig, steps: int) -> int:
    zero = Counted(lambda x, alpha_bar: torch.zeros_like(x))
    run_peer(config, steps, zero, torch.zeros(1, 1, dtype=torch.float64))
    return zero.calls


def steps_for_nfe(count: Callable[[int], int], nfe: int) -> tuple[int, int] | None:
    """The most steps whose run makes at most ``nfe`` evaluations, with that count (binary search;
    evaluations never fall as steps grow); None when even one step needs more."""
    if count(1) > nfe:
        return None
    lo, hi = 1, nfe  # count(lo) <= nfe; every method makes at least one evaluation per step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) <= nfe:
            lo = mid
        else:
            hi = mid - 1
    return lo, count(lo)


def errors(gm: GaussianMixture, x: Tensor) -> tuple[float, float]:
    """(Frechet distance to the true moments, total variation of the component shares)."""
    if not torch.isfinite(x).all():
        return math.nan, math.nan
    shares = torch.bincount(gm.classify(x), minlength=len(gm.weights)).double() / x.shape[0]
    return frechet_distance(x, gm.mean(), gm.cov()), float((shares - gm.weights).abs().sum() / 2)


@dataclass
class Floor:
    """Errors of exact draws of the same size, what a perfect sampler scores: median and max of draws."""

    fd: float
    tv: float
    fd_max: float
    tv_max: float

    @classmethod
    def measure(cls, gm: GaussianMixture, n: int, draws: int = FLOOR_DRAWS) -> Floor:
        gen = torch.Generator().manual_seed(12345)
        pairs = [errors(gm, gm.sample(n, gen)[0]) for _ in range(draws)]
        fds, tvs = [p[0] for p in pairs], [p[1] for p in pairs]
        return cls(statistics.median(fds), statistics.median(tvs), max(fds), max(tvs))


@dataclass
class Cell:
    """One run; ``error`` names the exception of a diffusers configuration that cannot run there."""

    nfe: int
    steps: int
    fd: float
    tv: float
    seconds: float
    error: str = ""


@dataclass
class Row:
    """A sampler in one configuration over NFE targets; a target no step count meets maps to None.
    ``kept``: the configuration shown in the main tables (ours: the default spacing)."""

    name: str
    ours: bool
    kept: bool = False
    cells: dict[int, Cell | None] = field(default_factory=dict)


@dataclass
class DimResult:
    dim: int
    n: int
    floor: Floor
    rows: list[Row]  # ours in default spacings, then each diffusers scheduler in its best configuration
    sweep: list[Row]  # every configuration tried at the selection NFEs
    checks: list[str]  # driver checks run when a kept configuration misses the floor at the top NFE


def measure_cell(
    run: Callable[[int], Tensor],
    count: Callable[[int], int],
    nfe: int,
    gm: GaussianMixture,
    peer: bool = False,
) -> Cell | None:
    """Errors of the run with the most steps that fit in ``nfe`` evaluations. A diffusers
    configuration that raises there (``leading`` spacing with as many steps as training steps:
    DPM++2M's and UniPC's step indices overrun) gives a cell that says so; an exception in our
    samplers propagates."""
    started = time.process_time()
    try:
        matched = steps_for_nfe(count, nfe)
        if matched is None:
            return None
        steps, actual = matched
        x = run(steps)
    except Exception as err:  # diffusers fails in many ways (IndexError, AssertionError...)
        if not peer:
            raise
        return Cell(nfe, 0, math.nan, math.nan, time.process_time() - started, error=type(err).__name__)
    return Cell(actual, steps, *errors(gm, x), time.process_time() - started)


def default_label(method: str) -> str:
    """The default spacing of ``method``, with its last noise level where that is not 0.002."""
    return sampler.SAMPLERS[method].spacing + (" to s(N)" if sampler.SAMPLERS[method].sigma_min is not None else "")


def tuned_grid(gm: GaussianMixture, sched, dim: int, method: str, nfe: int) -> tune.TunedGrid:
    """The grid of ``method`` tuned for ``nfe`` evaluations on TUNE_DRAWS draws other than the benchmark's."""
    denoiser = gm.denoiser(sched)
    return tune.tune(denoiser, (dim,), sched, method, nfe, draws=TUNE_DRAWS, seed=TUNE_SEED, dtype=torch.float64)


def tuned_cell(method: str, nfe: int, gm: GaussianMixture, sched, n: int, dim: int) -> Cell:
    """Our ``method`` on a grid tuned for ``nfe`` evaluations on TUNE_DRAWS other draws; the
    cell's seconds are the tuning's CPU time plus the run's."""
    started = time.process_time()
    grid = tuned_grid(gm, sched, dim, method, nfe)
    x = run_ours(method, grid.steps, gm.denoiser(sched), sched, n, dim, times=grid.times)
    return Cell(grid.nfe, grid.steps, *errors(gm, x), time.process_time() - started)


def selection_nfes(nfes: Sequence[int]) -> list[int]:
    """NFE targets that pick each diffusers scheduler's configuration: the few-step regime."""
    return [n for n in nfes if n <= 20] or [min(nfes)]


def selection_score(row: Row, targets: Sequence[int]) -> float:
    """Mean log Frechet distance over the selection targets (lower is better; NaN runs lose)."""
    values = [row.cells[t].fd for t in targets if row.cells.get(t) is not None]
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        return math.inf
    return sum(math.log(v) for v in values) / len(values)


def misses_floor(cell: Cell | None, floor: Floor) -> bool:
    return cell is not None and not cell.fd <= 2 * floor.fd_max


def accuracy(
    dim: int,
    n: int,
    nfes: Sequence[int],
    our_schedule: str = "linear",
    samplers: Sequence[str] = SAMPLERS,
    schedulers: Sequence[str] = tuple(PEER_CONFIGS),
    log: Callable[[str], None] = print,
) -> DimResult:
    """All samplers on the ``dim``-D test mixture. Ours keep their default spacing (the others are
    run at the selection NFEs only); diffusers' schedulers keep their best configuration there."""
    gm = GaussianMixture.random(dim, COMPONENTS, seed=dim)
    sched = schedule.get(our_schedule)
    noise = initial_noise(n, dim)
    floor = Floor.measure(gm, n)
    chosen = selection_nfes(nfes)
    top = max(nfes)
    log(f"{dim}-D, N = {n}: floor FD {floor.fd:.3g} (max {floor.fd_max:.3g}), TV {floor.tv:.3g}")

    def fill(row: Row, run: Callable[[int], Tensor], count: Callable[[int], int], targets: Sequence[int]) -> None:
        for target in targets:
            if target in row.cells:
                continue
            cell = row.cells[target] = measure_cell(run, count, target, gm, peer=not row.ours)
            text = "skipped" if cell is None else f"NFE {cell.nfe}: {_describe(cell)} ({cell.seconds:.1f}s)"
            log(f"  {row.name} @ {target}: {text}")

    rows, sweep, checks = [], [], []
    for method in samplers:
        default = sampler.SAMPLERS[method].spacing
        for spacing in (None, *(s for s in schedule.SPACINGS if s != default)):
            row = Row(f"{method}, {spacing or default_label(method)}", ours=True, kept=spacing is None)
            run = functools.partial(
                run_ours, method, denoiser=gm.denoiser(sched), sched=sched, n=n, dim=dim, spacing=spacing
            )
            count = functools.partial(our_evaluations, method, spacing, our_schedule)
            fill(row, run, count, nfes if row.kept else chosen)
            sweep.append(Row(row.name, True, row.kept, {t: row.cells[t] for t in chosen}))
            if row.kept:
                rows.append(row)
    for method in [m for m in TUNED if m in samplers]:
        row = Row(f"{method}, tuned", ours=True, kept=True)
        for target in nfes:
            row.cells[target] = tuned_cell(method, target, gm, sched, n, dim) if target <= TUNED_MAX_NFE else None
            cell = row.cells[target]
            log(
                f"  {row.name} @ {target}: "
                + ("skipped" if cell is None else f"{_describe(cell)} ({cell.seconds:.1f}s)")
            )
        rows.append(row)
        sweep.append(Row(row.name, True, True, {t: row.cells.get(t) for t in chosen}))

    denoise = mixture_vp_denoiser(gm)
    for scheduler in schedulers:
        tried = []
        for config in PEER_CONFIGS[scheduler]:
            row = Row(config.name, ours=False)
            run = functools.partial(run_peer, config, denoise=denoise, noise=noise)
            count = functools.partial(peer_evaluations, config)
            fill(row, run, count, chosen)
            tried.append((row, run, count))
        best, run, count = min(tried, key=lambda item: selection_score(item[0], chosen))
        best.kept = True
        sweep += [Row(row.name, False, row.kept, dict(row.cells)) for row, _, _ in tried]
        fill(best, run, count, nfes)
        best.cells = {t: best.cells[t] for t in nfes}
        rows.append(best)
        if top >= CONVERGED_NFE and misses_floor(best.cells[top], floor) and best is not tried[0][0]:
            reference, reference_run, reference_count = tried[0]
            fill(reference, reference_run, reference_count, [top])
            cell = reference.cells[top]
            checks.append(
                f"{best.name} misses the floor at {top} NFE ({_describe(best.cells[top])}); "
                f"{reference.name} at NFE {cell.nfe} scores {_describe(cell)}: "
                + (
                    "the driver is right, the configuration is the cause."
                    if not misses_floor(cell, floor)
                    else "both miss."
                )
            )
            log("  check: " + checks[-1])
    return DimResult(dim, n, floor, rows, sweep, checks)


# --- overhead ------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Median seconds a ``steps``-step run spends outside the denoiser: the fixed setup (time grid
    and initial noise), the loop over the steps, and the whole call as users make it."""

    setup: float
    loop: float
    call: float
    steps: int

    @property
    def per_step(self) -> float:
        return self.loop / self.steps

    @classmethod
    def measure(
        cls,
        prepare: Callable[[], object],
        loop: Callable[[object], object],
        steps: int,
        repeats: int,
        call: Callable[[], object] | None = None,
    ) -> Timing:
        """``loop`` runs on what ``prepare`` returns; ``call`` (default: both in a row) is the
        user-facing call. Each is timed in every repeat, so that all see the same machine load."""
        loop(prepare())  # warm-up: first-call allocations and lazy imports
        if call is not None:
            call()
        times = []
        for _ in range(repeats):
            started = time.process_time()
            state = prepare()
            prepared = time.process_time()
            loop(state)
            looped = time.process_time()
            if call is None:
                whole = looped - started
            else:
                call()
                whole = time.process_time() - looped
            times.append((prepared - started, looped - prepared, whole))
        return cls(*(statistics.median(t[k] for t in times) for k in range(3)), steps)


def our_timing(method: str, shape: Sequence[int], steps: int = OVERHEAD_STEPS, repeats: int = 21) -> Timing:
    """Our method around a denoiser that returns a precomputed tensor. Setup: the time grid of its
    default spacing and the per-sample seeded noise source with its first draw; loop: the method's
    step function over them; call: ``sampler.sample``, which does both plus its per-step wrapper."""
    shape = tuple(shape)
    x0 = torch.randn(*shape)
    sched = schedule.get("linear")
    seeds = sampler.seeds_for(0, shape[0])
    step_fn = sampler.get(method)

    def prepare() -> tuple:
        grid = sampler.Grid.make(
            sched, steps, sampler.SAMPLERS[method].spacing, 1.0, sampler.default_sigma_min(method, steps)
        )
        noise = sampler.NoiseSource(seeds, shape[1:], "cpu", torch.float32)
        return grid, noise, noise()

    def loop(state: tuple) -> Tensor:
        grid, noise, x = state
        return step_fn(lambda x_t, i, record=True: x0, x, grid, noise)

    call = lambda: sampler.sample(lambda x, t, **_: x0, shape, sched, method, steps, seed=0)  # noqa: E731
    return Timing.measure(prepare, loop, steps, repeats, call)


def peer_timing(config: PeerConfig, shape: Sequence[int], steps: int = OVERHEAD_STEPS, repeats: int = 21) -> Timing:
    """A diffusers pipeline's loop around a denoiser that returns a precomputed tensor. Setup:
    ``set_timesteps`` and one ``randn`` for the batch; loop: ``scale_model_input`` + ``step``."""
    x0 = torch.randn(*shape)
    scheduler = config.build()
    gen = torch.Generator().manual_seed(0)

    def prepare() -> Tensor:
        scheduler.set_timesteps(steps)
        return torch.randn(*shape, generator=gen) * scheduler.init_noise_sigma

    def loop(x: Tensor) -> Tensor:
        for t in scheduler.timesteps:
            scheduler.scale_model_input(x, t)
            x = scheduler.step(x0, t, x).prev_sample
        return x

    return Timing.measure(prepare, loop, steps, repeats)


@dataclass
class Overhead:
    shapes: list[tuple[int, ...]]
    ours: dict[str, list[Timing]]  # method -> one timing per shape
    theirs: dict[str, list[Timing]]  # diffusers scheduler -> one timing per shape


def overhead(
    shapes: Sequence[Sequence[int]] = OVERHEAD_SHAPES, repeats: int = 21, log: Callable[[str], None] = print
) -> Overhead:
    """Every sampler of ours and every diffusers scheduler (its first configuration; the others
    differ only in ``set_timesteps``) on each shape."""
    ours, theirs = {}, {}
    for method in SAMPLERS:
        ours[method] = [our_timing(method, s, repeats=repeats) for s in shapes]
        log(f"  overhead {method}: " + ", ".join(f"{t.per_step * 1e6:.0f} us/step" for t in ours[method]))
    for scheduler, configs in PEER_CONFIGS.items():
        theirs[scheduler] = [peer_timing(configs[0], s, repeats=repeats) for s in shapes]
        log(
            f"  overhead {SHORT_NAMES[scheduler]}: "
            + ", ".join(f"{t.per_step * 1e6:.0f} us/step" for t in theirs[scheduler])
        )
    return Overhead([tuple(s) for s in shapes], ours, theirs)


# --- report ------------------------------------------------------------------------------------


def machine() -> str:
    import diffusers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} thread), "
        f"diffusers {diffusers.__version__}, Python {platform.python_version()}"
    )


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3g}"


def _describe(cell: Cell) -> str:
    return f"fails ({cell.error})" if cell.error else f"FD {_fmt(cell.fd)}, TV {_fmt(cell.tv)}"


def _cell(cell: Cell | None, target: int, metric: str, best: float = math.nan) -> str:
    if cell is None:
        return "skipped"
    if cell.error:
        return f"fails ({cell.error})"
    value = getattr(cell, metric)
    text = f"**{_fmt(value)}**" if value == best else _fmt(value)
    return text if cell.nfe == target else f"{text} ({cell.nfe})"


def _display_name(row: Row) -> str:
    return f"ours: {row.name}" if row.ours else f"diffusers: {row.name}"


def accuracy_table(result: DimResult, metric: str, nfes: Sequence[int]) -> list[str]:
    lines = ["| sampler | " + " | ".join(f"NFE {t}" for t in nfes) + " |", "|---|" + "---|" * len(nfes)]
    best = {}
    for t in nfes:
        values = [getattr(r.cells[t], metric) for r in result.rows if r.cells.get(t) is not None]
        best[t] = min((v for v in values if math.isfinite(v)), default=math.nan)
    for row in result.rows:
        cells = " | ".join(_cell(row.cells.get(t), t, metric, best[t]) for t in nfes)
        lines.append(f"| {_display_name(row)} | {cells} |")
    floor = _fmt(getattr(result.floor, metric))
    lines.append("| floor (exact draws) | " + " | ".join(floor for _ in nfes) + " |")
    return lines


def sweep_table(results: Sequence[DimResult], targets: Sequence[int]) -> list[str]:
    head = " | ".join(f"{r.dim}-D NFE {t}" for r in results for t in targets)
    lines = [f"| configuration | {head} |", "|---|" + "---|" * (len(results) * len(targets))]
    for i, row in enumerate(results[0].sweep):
        cells = []
        for result in results:
            same = result.sweep[i]
            cells += [_cell(same.cells.get(t), t, "fd") + (" *" if same.kept else "") for t in targets]
        lines.append(f"| {_display_name(row)} | " + " | ".join(cells) + " |")
    return lines


def best_of(rows: Sequence[Row], ours: bool, target: int) -> tuple[str, Cell] | None:
    candidates = [
        (r.name, r.cells[target])
        for r in rows
        if r.ours == ours and r.cells.get(target) is not None and math.isfinite(r.cells[target].fd)
    ]
    return min(candidates, key=lambda item: item[1].fd, default=None)


def findings(results: Sequence[DimResult], nfes: Sequence[int], cost: Overhead | None) -> list[str]:
    """Sentences read off the numbers: our best against diffusers' best at the headline NFEs, the
    driver check at the top NFE, and the overhead ratios."""
    lines = []
    for result in results:
        floor = result.floor
        for target in [t for t in (5, 10, 20, 50) if t in nfes] or list(nfes[:2]):
            mine, theirs = best_of(result.rows, True, target), best_of(result.rows, False, target)
            if mine is None or theirs is None:
                continue
            (my_name, my_cell), (their_name, their_cell) = mine, theirs
            if max(my_cell.fd, their_cell.fd) <= floor.fd_max:
                verdict = "both are at the floor, no difference can be read"
            elif my_cell.fd <= their_cell.fd:
                verdict = f"ours is at least as accurate ({their_cell.fd / my_cell.fd:.2g}x lower FD)"
            else:
                verdict = f"ours is LESS accurate ({my_cell.fd / their_cell.fd:.2g}x higher FD)"
            sentence = (
                f"- {result.dim}-D, {target} NFE: our best is {my_name} (FD {_fmt(my_cell.fd)}, "
                f"NFE {my_cell.nfe}), diffusers' best is {their_name} (FD {_fmt(their_cell.fd)}, "
                f"NFE {their_cell.nfe}); {verdict}."
            )
            swept = best_of(result.sweep, True, target)
            if swept is not None and swept[1].fd < my_cell.fd:
                sentence += f" With a non-default spacing ours reaches FD {_fmt(swept[1].fd)} ({swept[0]})."
            lines.append(sentence)
        top = max(nfes)
        if top >= CONVERGED_NFE:
            at_top = [(r.name, r.cells[top]) for r in result.rows if r.cells.get(top) is not None]
            missing = [f"{name} ({_describe(cell)})" for name, cell in at_top if misses_floor(cell, floor)]
            converged = [cell.fd for _, cell in at_top if math.isfinite(cell.fd)]
            together = len(missing) == len(at_top) and converged and max(converged) <= 1.25 * min(converged)
            lines.append(
                f"- {result.dim}-D, {top} NFE: floor FD {_fmt(floor.fd)} (max over {FLOOR_DRAWS} exact draws "
                f"{_fmt(floor.fd_max)}); "
                + (
                    "every sampler is within 2x of that max: every driver reproduces the mixture."
                    if not missing
                    else f"every sampler converges to FD {_fmt(min(converged))}-{_fmt(max(converged))}, above "
                    "2x that max: the error of this one noise draw (the same for all), not of the drivers."
                    if together
                    else "above 2x that max: " + ", ".join(missing) + "."
                )
            )
        lines += [f"- {result.dim}-D: {check}" for check in result.checks]
    if cost is not None:
        for i, shape in enumerate(cost.shapes):
            pairs = [(m, s) for m, s in OVERHEAD_PAIRS if s is not None]
            loop = [cost.theirs[s][i].per_step / cost.ours[m][i].per_step for m, s in pairs]
            call = [cost.theirs[s][i].call / cost.ours[m][i].call for m, s in pairs]
            setup_ours = statistics.median(t[i].setup for t in cost.ours.values()) * 1e3
            setup_theirs = statistics.median(t[i].setup for t in cost.theirs.values()) * 1e3
            lines.append(
                f"- overhead on {list(shape)}: diffusers/ours per loop step {min(loop):.2g}x to "
                f"{max(loop):.2g}x, per {OVERHEAD_STEPS}-step call {min(call):.2g}x to {max(call):.2g}x; "
                f"fixed cost per call (grid and initial noise) {setup_ours:.2g} ms ours against "
                f"{setup_theirs:.2g} ms theirs (medians); "
                f"our ddpm's step costs {cost.ours['ddpm'][i].per_step / cost.ours['ddim'][i].per_step:.2g}x "
                "ddim's (per-sample seeded noise every step)."
            )
    return lines


def overhead_table(cost: Overhead, index: int) -> list[str]:
    lines = [
        "| ours | setup ms | loop us/step | call us/step | diffusers | setup ms | loop us/step "
        "| call us/step | theirs/ours loop | theirs/ours call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def three(t: Timing) -> str:
        return f"{t.setup * 1e3:.2f} | {t.per_step * 1e6:.0f} | {t.call / t.steps * 1e6:.0f}"

    for method, scheduler in OVERHEAD_PAIRS:
        mine = cost.ours[method][index]
        if scheduler is None:
            lines.append(f"| {method} | {three(mine)} | (no peer) | - | - | - | - | - |")
            continue
        theirs = cost.theirs[scheduler][index]
        ratios = f"{theirs.per_step / mine.per_step:.2f} | {theirs.call / mine.call:.2f}"
        lines.append(f"| {method} | {three(mine)} | {PEER_CONFIGS[scheduler][0].name} | {three(theirs)} | {ratios} |")
    return lines


def report(results: Sequence[DimResult], nfes: Sequence[int], cost: Overhead | None, context: dict[str, str]) -> str:
    targets = selection_nfes(nfes)
    lines = [
        "# Samplers: ours against diffusers on exact Gaussian-mixture denoisers",
        "",
        f"Reproduce: `{REPRODUCE}` (`--quick` for a smoke run).",
        "",
        *[f"- {key}: {value}" for key, value in context.items()],
        "",
        "## Findings",
        "",
        *findings(results, nfes, cost),
        "",
        "## Accuracy",
        "",
        "Mixtures `GaussianMixture.random(d, 3, seed=d)` (the core tests' ones), the exact denoiser "
        "E[x0 | x_t] for everyone, the same initial noise for everyone (seeds 0..N-1, diffusers' copy "
        "scaled by `init_noise_sigma`). Ours: schedule `linear` (DDPM's betas in continuous time), "
        f"default spacings {dict((m, default_label(m)) for m in sampler.SAMPLERS)} (`to s`: the last "
        "evaluation at noise level s(N) = 0.05 min(1, (10/N)^2), at least 0.002, for N steps, else at "
        "0.002); `tuned`: a grid from `toolkit.core.tune` tuned for "
        f"that NFE on {TUNE_DRAWS} other noise draws (seed {TUNE_SEED}), up to {TUNED_MAX_NFE} NFE. "
        "diffusers: DDPM's linear betas "
        '1e-4..0.02 over 1000 steps, `prediction_type="sample"` (x0: no division by alpha), DDIM with '
        '`clip_sample=False`, DPM++2M with `solver_order=2, algorithm_type="dpmsolver++"`, otherwise '
        "defaults; the denoiser is evaluated at the noise level the scheduler's update assumes (its "
        "`sigmas` entry; DDIM: `alphas_cumprod[t]`). Each diffusers row is the scheduler's best "
        f"configuration (lowest mean log FD at NFE {targets}); every configuration is listed below.",
        "",
        "Cells: the error; `(k)`: the actual NFE where the target cannot be met exactly (Heun makes two "
        "evaluations per step but one on the last); **bold**: lowest in the column. FD: squared "
        "2-Wasserstein distance between the Gaussian fit of the samples and the mixture's true mean and "
        "covariance. TV: total variation between the share of samples assigned to each component and "
        f"the true weights. Floor: the median over {FLOOR_DRAWS} sets of N exact draws; values near it "
        "are sampling noise, which is heavy-tailed here (the share of each far-apart component moves the "
        "mean). The deterministic samplers all start from one noise draw, so at high NFE they converge "
        "to one and the same value, which can sit below the floor median; every ddpm cell is a fresh "
        "realisation (new noise at every step), so its column-to-column changes include sampling noise.",
        "",
    ]
    for result in results:
        spread = f"max over the draws: FD {_fmt(result.floor.fd_max)}, TV {_fmt(result.floor.tv_max)}"
        for metric, title in (("fd", "Frechet distance"), ("tv", "component-weight TV")):
            lines += [
                f"### {result.dim}-D, N = {result.n}: {title}",
                "",
                *accuracy_table(result, metric, nfes),
            ]
            lines += ["", f"Floor {spread}.", ""]
    lines += [
        f"### Every configuration at NFE {targets} (FD; `*`: shown above)",
        "",
        "diffusers: `timestep_spacing` trailing / linspace / leading, or `use_karras_sigmas` / "
        "`use_lu_lambdas` (with linspace). Ours: `spacing=` uniform / logsnr / karras of `sampler.sample`.",
        "",
        *sweep_table(results, targets),
        "",
    ]
    if cost is not None:
        lines += [
            "## Overhead",
            "",
            f"{OVERHEAD_STEPS} steps, float32, `torch.set_num_threads(1)`, a denoiser that returns a "
            "precomputed x0, median of repeats. Setup: ours builds the time grid of the method's default "
            "spacing and draws per-sample seeded noise (counter-based: a hash of seed, draw and element "
            "index, so that a sample does "
            "not depend on its batch); diffusers' loop calls `set_timesteps` and draws one batch tensor. "
            "Loop: the steps alone (ours: the method's step function over the prebuilt grid; diffusers: "
            "`scale_model_input` + `step`). Call: the "
            f"whole {OVERHEAD_STEPS}-step call / steps. Heun's steps make two evaluations. Process CPU "
            "time; the machine is shared with other jobs (load average above): differences under ~20% "
            "are noise.",
            "",
        ]
        for i, shape in enumerate(cost.shapes):
            lines += [f"### {list(shape)}", "", *overhead_table(cost, i), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"N = {QUICK_SAMPLES}, NFE {QUICK_NFES}, few repeats")
    parser.add_argument("--n", type=int, default=None, help=f"samples per run (default {SAMPLES})")
    parser.add_argument("--nfe", type=int, nargs="+", default=None, help=f"NFE targets (default {NFES})")
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS), help="mixture dimensions")
    parser.add_argument("--schedule", default="linear", choices=sorted(schedule.SCHEDULES), help="ours only")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    n = args.n or (QUICK_SAMPLES if args.quick else SAMPLES)
    nfes = sorted(set(args.nfe or (QUICK_NFES if args.quick else NFES)))
    if n < 10 or min(nfes) < 1 or min(args.dims) < 1:
        parser.error("--n must be >= 10, every --nfe and --dims >= 1")

    torch.set_num_threads(1)
    started, cpu_started, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
    results = [accuracy(dim, n, nfes, args.schedule) for dim in args.dims]
    cost = None if args.skip_overhead else overhead(repeats=5 if args.quick else 21)
    context = {
        "machine": machine(),
        "load average (1 min) before / after": f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}",
        "run time": f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu_started:.0f} s CPU"
        + (" (--quick)" if args.quick else ""),
        "our schedule": args.schedule,
    }
    text = report(results, nfes, cost, context)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
