"""Samplers over a denoiser ``D(x_t, t, **cond) -> x0_hat``.

``sample`` does what is common to all: per-sample seeded noise and the time grid; it wraps the
denoiser for classifier-free guidance and the known region (``toolkit.core.wrappers``), and reports
every step to callbacks (the progress bar, the trajectory, the caller's own). Each method is one
short function over ``model(x, i) -> x0_hat`` (the wrapped denoiser at grid point i) and the grid's
``alpha``/``sigma``. Adding a sampler means adding one function and its entry in ``SAMPLERS``,
the registry that also declares its default spacing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from toolkit.core import schedule as schedules
from toolkit.core.schedule import Schedule
from toolkit.core.wrappers import DenoiserFn, KnownRegion, checked_interval, guided


@dataclass
class Grid:
    """Sampling times, decreasing to 0 (= clean: alpha 1, sigma 0), with their scales as floats."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]

    @classmethod
    def make(
        cls,
        sched: Schedule,
        steps: int,
        spacing: str,
        t_start: float,
        sigma_min: float | None = None,
        times: Sequence[float] | None = None,
    ) -> Grid:
        """The grid of a named spacing, or of explicit ``times`` with ``spacing="tuned"``."""
        if spacing == "tuned":
            ts = _tuned_times(times, steps, t_start)
        elif times is not None:
            raise ValueError(f"times are for spacing='tuned', not spacing={spacing!r}")
        else:
            ts = schedules.timesteps(
                sched, steps, spacing, t_start, sigma_min=sigma_min or schedules.SAMPLING_SIGMA_MIN
            )
        alpha, sigma = sched.alpha_sigma(ts)
        alpha[-1], sigma[-1] = 1.0, 0.0
        return cls(ts.tolist(), alpha.tolist(), sigma.tolist())

    def __len__(self) -> int:
        return len(self.t)


def _tuned_times(times: Sequence[float] | None, steps: int, t_start: float) -> Tensor:
    if times is None:
        raise ValueError(
            "spacing='tuned' needs times=[...], a grid from toolkit.core.tune (python -m toolkit.tune_steps "
            "ckpt=... nfe=...; load it with toolkit.core.tune.load_grid(path, method, steps))"
        )
    ts = torch.as_tensor([float(v) for v in times], dtype=torch.float64)
    if len(ts) != steps + 1:
        raise ValueError(f"a tuned grid of {len(ts)} times makes {len(ts) - 1} steps, not steps={steps}")
    if ts[-1] != 0 or not (ts.diff() < 0).all() or ts[0] > 1:
        raise ValueError("tuned times must decrease from at most 1 to exactly 0")
    if t_start < 1.0:
        raise ValueError("a tuned grid starts from noise: strength must be 1 (image-to-image uses a named spacing)")
    return ts


@dataclass
class Trajectory:
    """Snapshots every k steps: times [K], noisy states x_t and clean estimates x0_hat [K, n, ...]."""

    t: Tensor
    x_t: Tensor
    x0_hat: Tensor


_MASK32 = 0xFFFFFFFF
# int32 constants as 0-d tensors (Python ints would be converted at every operation): MurmurHash3's
# finaliser multipliers as signed int32, and the masks that make the shifts by 13 and 16 logical.
_MIX1, _MIX2, _LOW13, _LOW16 = (
    torch.tensor(v, dtype=torch.int32) for v in (0x85EBCA6B - 2**32, 0xC2B2AE35 - 2**32, 0x7FFFF, 0xFFFF)
)


def _mix32(x: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser on int32 tensors (multiplication wraps). Integer arithmetic
    is exact, so each element's result depends on its input alone."""
    x = x ^ ((x >> 16) & _LOW16)
    x = x * _MIX1
    x = x ^ ((x >> 13) & _LOW13)
    x = x * _MIX2
    return x ^ ((x >> 16) & _LOW16)


def _int32(x: Tensor) -> Tensor:
    """The low 32 bits of an int64 tensor as int32."""
    x = x & _MASK32
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


_NORMAL_TABLES: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}


def _normal_tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Linear interpolation of the standard normal quantile function on 2^16 cells, as float32
    offsets and slopes for sub-cell index j in 0..65535 (cell i covers u = (i + (j + 0.5) / 2^16) / 2^16);
    and its values at the 2^16 sub-cells of the lowest cell, (j + 0.5) / 2^32."""
    if device not in _NORMAL_TABLES:
        edges = torch.special.ndtri(torch.arange(65537, dtype=torch.float64) / 65536)
        edges[0] = edges[1]  # cells 0 and 65535 are drawn from the tail table instead
        slope = edges.diff() / 65536
        offset = edges[:-1] + 0.5 * slope
        tail = torch.special.ndtri((torch.arange(65536, dtype=torch.float64) + 0.5) / 2**32)
        _NORMAL_TABLES[device] = tuple(v.float().to(device) for v in (offset, slope, tail))
    return _NORMAL_TABLES[device]


class NoiseSource:
    """Standard normal draws where sample i's noise comes from its own seed, counter-based: element
    j of the k-th draw of the sample with seed s is a function of (s, k, j) alone, so a sample does
    not depend on its batch, and a draw is one batched computation without generators (the same
    operations on another device should give the same bits; only CPU is tested). A 32-bit hash
    of the three picks a cell of the normal quantile function (2^16 cells, linearly interpolated;
    the two outer cells from a table of 2^16 sub-cells each, reaching |z| = 6.2), computed with
    integer and single correctly rounded float32 operations only."""

    def __init__(self, seeds: Sequence[int], sample_shape: tuple[int, ...], device, dtype):
        device = torch.device(device)
        seeds = torch.as_tensor(list(seeds), dtype=torch.int64)
        key = _mix32(_mix32(_int32(seeds)) ^ _int32(seeds >> 32))
        self.key = key.to(device).view(-1, *[1] * len(sample_shape))
        self.index = _mix32(torch.arange(math.prod(sample_shape), device=device, dtype=torch.int32))
        self.index = self.index.view(sample_shape)
        self.tables = _normal_tables(device)
        self.sample_shape, self.device, self.dtype, self.draws = tuple(sample_shape), device, dtype, 0

    def __call__(self) -> Tensor:
        self.draws += 1
        counter = (0x9E3779B9 * self.draws) & _MASK32  # the draw number, spread over 32 bits
        stream = _mix32(self.key ^ (counter - 2**32 if counter >= 2**31 else counter))
        bits = _mix32(stream ^ self.index).view(-1)
        cell = (bits >> 16) & _LOW16
        offset, slope, tail = self.tables
        z = offset.index_select(0, cell) + (bits & _LOW16).float() * slope.index_select(0, cell)
        outer = (((cell - 1) & _LOW16) >= 65534).nonzero().view(-1)  # cells 0 and 65535
        if len(outer):
            low, sub = cell[outer] == 0, bits[outer] & _LOW16
            values = tail.index_select(0, torch.where(low, sub, 65535 - sub))
            z[outer] = torch.where(low, values, -values)
        return z.view(-1, *self.sample_shape).to(self.dtype)


Model = Callable[..., Tensor]


def first_order_step(x: Tensor, x0: Tensor, grid: Grid, i: int, noise: NoiseSource, eta: float = 0.0) -> Tensor:
    """DDIM's update from grid point i to i+1; ``eta`` = 0 is deterministic, 1 is DDPM's posterior."""
    a, s, a_next, s_next = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
    eps = (x - a * x0) / s
    c = eta * (s_next / s) * math.sqrt(max(0.0, 1 - (a / a_next) ** 2)) if eta > 0 else 0.0
    x_next = a_next * x0 + math.sqrt(max(0.0, s_next**2 - c**2)) * eps
    return x_next + c * noise() if c > 0 else x_next


def ddim(model: Model, x: Tensor, grid: Grid, noise: NoiseSource, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021); eta in [0, 1] blends from the deterministic ODE to DDPM."""
    for i in range(len(grid) - 1):
        x = first_order_step(x, model(x, i), grid, i, noise, eta)
    return x


def ddpm(model: Model, x: Tensor, grid: Grid, noise: NoiseSource) -> Tensor:
    """Ancestral sampling from DDPM's posterior q(x_s | x_t, x0_hat) (Ho et al. 2020), i.e. DDIM with eta = 1."""
    return ddim(model, x, grid, noise, eta=1.0)


def euler(model: Model, x: Tensor, grid: Grid, noise: NoiseSource) -> Tensor:
    """Euler on the probability-flow ODE in EDM's variables (x/alpha, sigma/alpha). That is
    DDIM's deterministic update; the method differs by its default (logSNR) spacing."""
    return ddim(model, x, grid, noise, eta=0.0)


def _lambdas(grid: Grid) -> list[float]:
    """lambda = log(alpha / sigma) at each grid point: -inf at pure noise, +inf at clean data."""
    return [
        math.log(a / s) if a > 0 and s > 0 else (math.inf if s == 0 else -math.inf)
        for a, s in zip(grid.alpha, grid.sigma)
    ]


def _order(order: int, i: int, grid: Grid, lam: list[float]) -> int:
    """The order a multistep method can use from grid point i: limited by the finite-lambda points
    it has seen, and lowered towards the end (the last step to sigma = 0 is first order)."""
    seen = sum(1 for v in lam[: i + 1] if math.isfinite(v))
    return max(1, min(order, seen, len(grid) - 1 - i)) if math.isfinite(lam[i]) and grid.sigma[i + 1] > 0 else 1


def _first_order(x: Tensor, x0: Tensor, grid: Grid, i: int, j: int) -> Tensor:
    """The exact solution from point i to point j for a clean estimate x0 held constant."""
    a, s, a_t, s_t = grid.alpha[i], grid.sigma[i], grid.alpha[j], grid.sigma[j]
    return (s_t / s) * x + (a_t - s_t * a / s) * x0


def dpmpp_3m(model: Model, x: Tensor, grid: Grid, noise: NoiseSource, order: int = 3) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022): exact integration of the linear part in lambda and a
    Taylor expansion of x0 in lambda from the last ``order`` denoiser outputs (divided differences
    on the non-uniform steps); lower orders at the start and towards the end."""
    lam, outputs = _lambdas(grid), []
    for i in range(len(grid) - 1):
        outputs.insert(0, model(x, i))
        p = _order(order, i, grid, lam)
        x_next = _first_order(x, outputs[0], grid, i, i + 1)
        if p > 1:
            h = lam[i + 1] - lam[i]
            phi1 = math.expm1(-h)
            d0 = (outputs[0] - outputs[1]) * (h / (lam[i] - lam[i - 1]))  # h times the slope in lambda
            if p == 2:
                x_next = x_next - (0.5 * grid.alpha[i + 1] * phi1) * d0
            else:
                r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
                d1 = (outputs[1] - outputs[2]) / r1
                first = d0 + (r0 / (r0 + r1)) * (d0 - d1)
                second = (d0 - d1) / (r0 + r1)
                phi2 = phi1 / h + 1
                phi3 = phi2 / h - 0.5
                x_next = x_next + grid.alpha[i + 1] * (phi2 * first - phi3 * second)
        x = x_next
        del outputs[order:]
    return x


def dpmpp_2m(model: Model, x: Tensor, grid: Grid, noise: NoiseSource) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): as dpmpp_3m with a second-order estimate of x0 from the
    last two denoiser outputs; first order on the first step and the final step to sigma = 0."""
    return dpmpp_3m(model, x, grid, noise, order=2)


def _unipc_update(
    x: Tensor, grid: Grid, lam: list[float], i: int, j: int, outputs: list[Tensor], target: Tensor | None, bh1: bool
) -> Tensor:
    """UniPC's update from point i to j with data prediction (Zhao et al. 2023, Alg. 2 and 3):
    ``outputs`` are x0 at points i, i - 1, ... (most recent first) and ``target`` the x0 at j for the
    corrector (UniC); the coefficients solve the order conditions with B(h) = h (bh1) or e^h - 1 (bh2)."""
    x_next = _first_order(x, outputs[0], grid, i, j)
    h = lam[j] - lam[i]
    ratios = [(lam[i - k] - lam[i]) / h for k in range(1, len(outputs))] + ([1.0] if target is not None else [])
    diffs = [(m - outputs[0]) / r for m, r in zip(outputs[1:], ratios)] + (
        [target - outputs[0]] if target is not None else []
    )
    if not diffs:
        return x_next
    hh = -h
    phi1 = math.expm1(hh)
    b_h = hh if bh1 else phi1
    if len(diffs) == 1:
        rho = [0.5]
    else:
        b, phi_k, factorial = [], phi1 / hh - 1, 1
        for k in range(1, len(diffs) + 1):
            b.append(phi_k * factorial / b_h)
            factorial *= k + 1
            phi_k = phi_k / hh - 1 / factorial
        r = torch.tensor([[v**row for v in ratios] for row in range(len(diffs))], dtype=torch.float64)
        rho = torch.linalg.solve(r, torch.tensor(b, dtype=torch.float64)).tolist()
    return x_next - (grid.alpha[j] * b_h) * sum(c * d for c, d in zip(rho, diffs))


def heun(model: Model, x: Tensor, grid: Grid, noise: NoiseSource) -> Tensor:
    """Heun's second-order method (as in EDM, Karras et al. 2022, Alg. 1 without churn), with the
    trapezoidal correction taken on the exponential-integrator form: a first-order step, a second
    evaluation there, then the step redone with the mean of the two clean estimates (UniC-1). It
    matches EDM's slope average to second order, and, as a convex combination of clean estimates,
    stays bounded at any step size, where EDM's slope at a much lower noise level overshoots. The
    step to sigma = 0 and a step from pure noise (alpha = 0) stay first order."""
    lam = _lambdas(grid)
    for i in range(len(grid) - 1):
        x0 = model(x, i)
        x_next = _first_order(x, x0, grid, i, i + 1)
        if grid.sigma[i + 1] > 0 and math.isfinite(lam[i]):
            x0_next = model(x_next, i + 1, record=False)
            x_next = _unipc_update(x, grid, lam, i, i + 1, [x0], x0_next, bh1=False)
        x = x_next
    return x


def unipc(
    model: Model,
    x: Tensor,
    grid: Grid,
    noise: NoiseSource,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023): the UniP multistep predictor of order 1-3 and, after each new
    denoiser output, the UniC corrector, which re-does the last step with that output (one order
    more, no extra evaluation; the output at the uncorrected point is kept). ``variant`` bh1 or bh2."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    if not 1 <= order <= 3:
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    lam, outputs, x_prev, p_prev = _lambdas(grid), [], x, 0
    for i in range(len(grid) - 1):
        x0 = model(x, i)
        if corrector and p_prev and grid.sigma[i + 1] > 0 and math.isfinite(lam[i - 1]):
            x = _unipc_update(x_prev, grid, lam, i - 1, i, outputs[:p_prev], x0, variant == "bh1")
        outputs.insert(0, x0)
        del outputs[order:]
        p_prev = _order(order, i, grid, lam)
        x_prev, x = x, _unipc_update(x, grid, lam, i, i + 1, outputs[:p_prev], None, variant == "bh1")
    return x


@dataclass(frozen=True)
class Method:
    """A sampler as the registry declares it: its step function, the spacing of its default grid
    with the noise level of that grid's last evaluation at 10 steps or fewer (``sigma_min``; None:
    the schedule's 0.002), and the step count below which it warns (``few_steps``, with the
    reason), which may depend on the method's ``order`` option (``few_steps_by_order``); ``options``:
    the keyword options its step function takes (unipc's ``order``, ``variant``)."""

    step: Callable[..., Tensor]
    spacing: str
    sigma_min: float | None = None
    few_steps: tuple[int, str] = (0, "")
    few_steps_by_order: dict[int, tuple[int, str]] = field(default_factory=dict)
    options: tuple[str, ...] = ()

    def default_sigma_min(self, steps: int) -> float | None:
        """The last noise level of the default grid at ``steps`` steps: ``sigma_min`` up to 10
        steps, then ``sigma_min * (10 / steps)^2``, down to 0.002 (None: 0.002)."""
        if self.sigma_min is None:
            return None
        return max(schedules.SAMPLING_SIGMA_MIN, self.sigma_min * min(1.0, (10 / steps) ** 2))

    def min_steps(self, options: dict) -> tuple[int, str]:
        """The fewest steps that are accurate with these method options, and why."""
        return self.few_steps_by_order.get(options.get("order"), self.few_steps)


_FIRST_ORDER = "a first-order method"
_THIRD_ORDER = (8, "its third-order extrapolation overshoots on long steps")
# Defaults chosen by measurement on the exact mixtures (benchmarks/results/samplers.md): the
# multistep and Heun samplers step uniformly in logSNR, and with few steps make their last
# evaluation at a higher noise level (0.05 up to 10 steps, then 0.05 (10/steps)^2 down to 0.002):
# below it the clean estimate barely changes, and few steps are better spent higher up. Below
# ``few_steps`` a method's error on the mixtures is several times that of the best method at the
# same number of evaluations: sample() warns with the advice.
SAMPLERS: dict[str, Method] = {
    "ddpm": Method(
        ddpm, "uniform", few_steps=(20, "ancestral sampling adds fresh noise at every step and needs many of them")
    ),
    "ddim": Method(ddim, "uniform", few_steps=(10, _FIRST_ORDER)),
    "dpmpp_2m": Method(dpmpp_2m, "logsnr", 0.05),
    "heun": Method(
        heun,
        "logsnr",
        0.05,
        few_steps=(10, "two evaluations per step, so half the steps of a multistep method at equal cost"),
    ),
    "euler": Method(euler, "logsnr", 0.05, few_steps=(10, _FIRST_ORDER)),
    "dpmpp_3m": Method(dpmpp_3m, "logsnr", 0.05, few_steps=_THIRD_ORDER, options=("order",)),
    "unipc": Method(unipc, "logsnr", 0.05, few_steps_by_order={3: _THIRD_ORDER}, options=("order", "variant")),
}


def method_spec(method: str) -> Method:
    """The registry entry of ``method``; ValueError naming the choices for an unknown one."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[method]


def get(method: str) -> Callable[..., Tensor]:
    """The step function of ``method``."""
    return method_spec(method).step


def default_sigma_min(method: str, steps: int) -> float | None:
    """The last noise level of ``method``'s default grid at ``steps`` steps (None: 0.002)."""
    return method_spec(method).default_sigma_min(steps)


def seeds_for(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per sample: an int seed gives seed, seed + 1, ..., so sample i of a batch equals
    a batch of one drawn with seed + i."""
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} samples; pass one seed per sample or one int")
    return seeds


def _as_batch(v: Tensor | None, shape: tuple[int, ...], name: str, device, dtype) -> Tensor | None:
    if v is None:
        return None
    v = torch.as_tensor(v, device=device, dtype=dtype)
    try:
        return v.expand(shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(v.shape)} does not broadcast to the sample shape {shape}") from None


# --- callbacks: what watches the sampling, called once per step ---------------------------------


@dataclass
class Step:
    """What a callback sees after the denoiser's evaluation at grid point ``i`` (time ``t``)."""

    i: int
    t: float
    x_t: Tensor
    x0_hat: Tensor


Callback = Callable[[Step], None]


class TrajectoryRecorder:
    """A callback that keeps x_t and x0_hat every ``every`` steps."""

    def __init__(self, every: int):
        self.every, self.snapshots = every, []

    def __call__(self, step: Step) -> None:
        if step.i % self.every == 0:
            self.snapshots.append((step.t, step.x_t.detach().clone(), step.x0_hat.detach().clone()))

    def trajectory(self, x: Tensor) -> Trajectory:
        """The snapshots and the final result ``x`` (at t = 0)."""
        snapshots = [*self.snapshots, (0.0, x, x)]
        return Trajectory(
            t=torch.tensor([s[0] for s in snapshots]),
            x_t=torch.stack([s[1] for s in snapshots]),
            x0_hat=torch.stack([s[2] for s in snapshots]),
        )


class ProgressBar:
    """A callback that advances a tqdm bar by one step (``close`` when sampling ends)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False)

    def __call__(self, step: Step) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _on_grid(denoiser: DenoiserFn, grid: Grid, cond: dict, n: int, device, dtype, callbacks: list[Callback]) -> Model:
    """The ``model(x, i) -> x0_hat`` step functions call: the denoiser at grid point i, reporting
    each step's evaluation to the callbacks (an extra evaluation within a step passes record=False)."""

    def model(x_t: Tensor, i: int, record: bool = True) -> Tensor:
        t = torch.full((n,), grid.t[i], device=device, dtype=dtype)
        x0 = denoiser(x_t, t, **cond)
        if record:
            step = Step(i, grid.t[i], x_t, x0)
            for callback in callbacks:
                callback(step)
        return x0

    return model


def sample(
    denoiser: DenoiserFn,
    shape: Sequence[int],
    schedule: Schedule | str,
    method: str = "dpmpp_2m",
    steps: int = 20,
    seed: int | Sequence[int] = 0,
    *,
    cond: dict[str, Tensor] | None = None,
    guidance: float | None = None,
    uncond: dict[str, Tensor] | None = None,
    guidance_interval: Sequence[float] | None = None,
    known_mask: Tensor | None = None,
    known_values: Tensor | None = None,
    x_init: Tensor | None = None,
    strength: float = 1.0,
    spacing: str | None = None,
    sigma_min: float | None = None,
    times: Sequence[float] | None = None,
    trajectory_every: int = 0,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callback | None = None,
    **method_options,
) -> Tensor | tuple[Tensor, Trajectory]:
    """Draw ``shape[0]`` samples by removing noise step by step.

    - ``cond``: keyword tensors for the denoiser (labels, observed values...).
    - ``guidance`` with ``uncond``: classifier-free guidance (``guided``),
      ``x0 = x0(uncond) + guidance * (x0(cond) - x0(uncond))``; ``uncond`` may be a negative prompt.
      ``guidance_interval=(t_low, t_high)``: guidance only at times t (1 = pure noise) within it.
    - ``known_mask`` (1 = known) with ``known_values``: the known region (``KnownRegion``) is held
      at its value in every clean estimate, so the noisy state carries it at the right noise level,
      and it is returned exactly (inpainting, outpainting, imputation). This replacement conditioning
      is approximate for the rest: it is denoised against a noisy copy of the known part, and lands
      short of the exact conditional; a network conditioned on the known values is exact.
    - ``x_init`` with ``strength`` in (0, 1]: start from ``x_init`` noised to t = strength
      (image-to-image); strength 1 ignores x_init's content.
    - ``spacing``: ``uniform``, ``logsnr`` or ``karras``, with ``sigma_min`` the noise level of the
      last evaluation before the final step to clean data; by default the method's own (its
      ``SAMPLERS`` entry). Few steps for a method that needs more warn.
      ``tuned`` with ``times``: an explicit grid (``toolkit.core.tune``), steps + 1 times down to 0.
    - ``trajectory_every=k``: also return a ``Trajectory`` of x_t and x0_hat every k steps
      (and the final result), to watch noise turn into a result.
    - ``callback``: called with a ``Step`` after each step's denoiser evaluation (as the progress
      bar and the trajectory are).
    - ``method_options``: e.g. ``eta`` for ddim.
    """
    spec = method_spec(method)
    sched = schedules.get(schedule)
    shape = tuple(int(d) for d in shape)
    _check_inputs(steps, strength, x_init, known_mask, known_values, guidance, uncond)
    if guidance_interval is not None:
        checked_interval(guidance_interval)  # also where guidance is off: a bad setting fails at once
    device = torch.device(device) if device is not None else _infer_device(cond, x_init, known_values)
    noise = NoiseSource(seeds_for(seed, shape[0]), shape[1:], device, dtype)
    grid = _grid(sched, method, spec, steps, strength, spacing, sigma_min, times, method_options)
    if guidance is not None:
        denoiser = guided(denoiser, guidance, uncond, guidance_interval)
    known = None
    if known_mask is not None:
        known = KnownRegion(
            _as_batch(known_mask, shape, "known_mask", device, dtype),
            _as_batch(known_values, shape, "known_values", device, dtype),
        )
        denoiser = known.wrap(denoiser)
    x_init = _as_batch(x_init, shape, "x_init", device, dtype)
    x = noise()
    if x_init is not None and strength < 1.0:
        x = grid.alpha[0] * x_init + grid.sigma[0] * x

    recorder = TrajectoryRecorder(trajectory_every) if trajectory_every else None
    bar = ProgressBar(len(grid) - 1, f"sampling ({method})", enabled=progress)
    callbacks = [c for c in (bar, recorder, callback) if c is not None]
    model = _on_grid(denoiser, grid, cond or {}, shape[0], device, dtype, callbacks)
    with torch.no_grad():
        x = spec.step(model, x, grid, noise, **method_options)
    bar.close()
    if known is not None:
        x = known.impose(x)
    return x if recorder is None else (x, recorder.trajectory(x))


def _check_inputs(steps, strength, x_init, known_mask, known_values, guidance, uncond) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if strength < 1.0 and x_init is None:
        raise ValueError("strength < 1 needs x_init, the input to start from (image-to-image)")
    if (known_mask is None) != (known_values is None):
        raise ValueError("known_mask and known_values go together: pass both or neither")
    if guidance is not None and uncond is None:
        raise ValueError("guidance needs uncond, the unconditional (or negative) conditioning")


def _grid(sched, method, spec, steps, strength, spacing, sigma_min, times, options) -> Grid:
    """The time grid: explicit ``times`` (tuned), a named spacing, or the method's default; warns
    when the step count is too low for the method (a tuned grid is the remedy it would suggest)."""
    if spacing is None and times is not None:
        spacing = "tuned"
    if spacing != "tuned":
        _warn_few_steps(method, spec, steps, options)
    if spacing is None:
        spacing, sigma_min = spec.spacing, sigma_min or spec.default_sigma_min(steps)
    return Grid.make(sched, steps, spacing, strength, sigma_min, times)


def _warn_few_steps(method: str, spec: Method, steps: int, options: dict) -> None:
    limit, why = spec.min_steps(options)
    if steps < limit:
        warnings.warn(
            f"{method} with {steps} steps is inaccurate ({why}): use at least {limit} steps, or "
            "method='unipc' or 'dpmpp_2m', the most accurate at few steps",
            stacklevel=4,
        )


def _infer_device(*candidates) -> torch.device:
    for c in candidates:
        if isinstance(c, Tensor):
            return c.device
        if isinstance(c, dict):
            for v in c.values():
                if isinstance(v, Tensor):
                    return v.device
    return torch.device("cpu")
