"""Samplers over a denoiser ``D(x_t, t, **cond) -> x0_hat``.

``sample`` does what is common to all: per-sample seeded noise, the time grid, classifier-free
guidance, the known region (inpainting, imputation), image-to-image start times, trajectories
and the progress bar. Each method is then one short function over ``model(x, i) -> x0_hat``
(the guided, known-region-aware denoiser at grid point i) and the grid's ``alpha``/``sigma``.
Adding a sampler means adding one function to ``SAMPLERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from toolkit.core import schedule as schedules
from toolkit.core.schedule import Schedule


@dataclass
class Grid:
    """Sampling times, decreasing to 0 (= clean: alpha 1, sigma 0), with their scales as floats."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]

    @classmethod
    def make(cls, sched: Schedule, steps: int, spacing: str, t_start: float) -> Grid:
        ts = schedules.timesteps(sched, steps, spacing, t_start)
        alpha, sigma = sched.alpha_sigma(ts)
        alpha[-1], sigma[-1] = 1.0, 0.0
        return cls(ts.tolist(), alpha.tolist(), sigma.tolist())

    def __len__(self) -> int:
        return len(self.t)


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
    not depend on its batch (nor on the device), and a draw is one batched computation without
    generators. A 32-bit hash of the three picks a cell of the normal quantile function (2^16
    cells, linearly interpolated; the two outer cells from a table of 2^16 sub-cells each, reaching
    |z| = 6.2), computed with integer and single correctly rounded float32 operations only."""

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
    DDIM's deterministic update; the method differs by its default (Karras) spacing."""
    return ddim(model, x, grid, noise, eta=0.0)


def heun(model: Model, x: Tensor, grid: Grid, noise: NoiseSource) -> Tensor:
    """EDM's second-order Heun sampler (Karras et al. 2022, Alg. 1 without churn): an Euler step,
    then the trapezoidal correction with the slope at the next point; the step to sigma = 0 and
    a step from pure noise (alpha = 0) stay first order."""
    for i in range(len(grid) - 1):
        a, s, a_next, s_next = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        x0 = model(x, i)
        eps = (x - a * x0) / s
        x_euler = a_next * x0 + s_next * eps
        if s_next == 0 or a == 0:
            x = x_euler
            continue
        x0_next = model(x_euler, i + 1, record=False)
        eps_mean = (eps + (x_euler - a_next * x0_next) / s_next) / 2
        # x/alpha moves by (sigma/alpha) differences times the mean slope eps_mean.
        x = a_next * (x / a + (s_next / a_next - s / a) * eps_mean)
    return x


def dpmpp_2m(model: Model, x: Tensor, grid: Grid, noise: NoiseSource) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): exact integration of the linear part in
    lambda = log(alpha/sigma) and a second-order multistep estimate of x0 from the last two
    denoiser outputs; first order on the first step and the final step to sigma = 0."""
    lam = [
        math.log(a / s) if a > 0 and s > 0 else (math.inf if s == 0 else -math.inf)
        for a, s in zip(grid.alpha, grid.sigma)
    ]
    x0_prev, h_prev = None, None
    for i in range(len(grid) - 1):
        a, s, a_next, s_next = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        x0 = model(x, i)
        h = lam[i + 1] - lam[i]
        x0_eff = x0
        if x0_prev is not None and s_next > 0 and math.isfinite(h_prev):
            r = h_prev / h
            x0_eff = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # x_next = (s_next/s) x + a_next (1 - e^{-h}) x0_eff, written without e^{-h}.
        x = (s_next / s) * x + (a_next - s_next * a / s) * x0_eff
        x0_prev, h_prev = x0, h
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpmpp_2m": dpmpp_2m,
    "heun": heun,
    "euler": euler,
}
DEFAULT_SPACING = {
    "ddpm": "uniform",
    "ddim": "uniform",
    "dpmpp_2m": "logsnr",
    "heun": "karras",
    "euler": "karras",
}


def get(method: str) -> Callable[..., Tensor]:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[method]


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


def sample(
    denoiser: Callable[..., Tensor],
    shape: Sequence[int],
    schedule: Schedule | str,
    method: str = "dpmpp_2m",
    steps: int = 20,
    seed: int | Sequence[int] = 0,
    *,
    cond: dict[str, Tensor] | None = None,
    guidance: float | None = None,
    uncond: dict[str, Tensor] | None = None,
    known_mask: Tensor | None = None,
    known_values: Tensor | None = None,
    x_init: Tensor | None = None,
    strength: float = 1.0,
    spacing: str | None = None,
    trajectory_every: int = 0,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **method_options,
) -> Tensor | tuple[Tensor, Trajectory]:
    """Draw ``shape[0]`` samples by removing noise step by step.

    - ``cond``: keyword tensors for the denoiser (labels, observed values...).
    - ``guidance`` with ``uncond``: classifier-free guidance,
      ``x0 = x0(uncond) + guidance * (x0(cond) - x0(uncond))``; ``uncond`` may be a negative prompt.
    - ``known_mask`` (1 = known) with ``known_values``: the known region is held at its value in
      every clean estimate, so the noisy state carries it at the right noise level, and it is
      returned exactly (inpainting, outpainting, imputation). This replacement conditioning is
      approximate for the rest: it is denoised against a noisy copy of the known part, and lands
      short of the exact conditional; a network conditioned on the known values is exact.
    - ``x_init`` with ``strength`` in (0, 1]: start from ``x_init`` noised to t = strength
      (image-to-image); strength 1 ignores x_init's content.
    - ``spacing``: ``uniform``, ``logsnr`` or ``karras``; by default the method's own.
    - ``trajectory_every=k``: also return a ``Trajectory`` of x_t and x0_hat every k steps
      (and the final result), to watch noise turn into a result.
    - ``method_options``: e.g. ``eta`` for ddim.
    """
    step_fn = get(method)
    sched = schedules.get(schedule)
    shape = tuple(int(d) for d in shape)
    n = shape[0]
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
    device = torch.device(device) if device is not None else _infer_device(cond, x_init, known_values)
    noise = NoiseSource(seeds_for(seed, n), shape[1:], device, dtype)
    grid = Grid.make(sched, steps, spacing or DEFAULT_SPACING[method], strength)
    mask = _as_batch(known_mask, shape, "known_mask", device, dtype)
    known = _as_batch(known_values, shape, "known_values", device, dtype)
    x_init = _as_batch(x_init, shape, "x_init", device, dtype)

    x = noise()
    if x_init is not None and strength < 1.0:
        x = grid.alpha[0] * x_init + grid.sigma[0] * x

    snapshots: list[tuple[float, Tensor, Tensor]] = []
    bar = tqdm(total=len(grid) - 1, desc=f"sampling ({method})", disable=not progress, leave=False)

    def model(x_t: Tensor, i: int, record: bool = True) -> Tensor:
        t = torch.full((n,), grid.t[i], device=device, dtype=dtype)
        if guidance is None:
            x0 = denoiser(x_t, t, **(cond or {}))
        else:
            both = {k: torch.cat([cond[k], uncond[k]]) for k in cond} if cond else {}
            x0_c, x0_u = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
            x0 = x0_u + guidance * (x0_c - x0_u)
        if mask is not None:
            x0 = torch.where(mask > 0, known, x0)
        if record:
            bar.update(1)
            if trajectory_every and i % trajectory_every == 0:
                snapshots.append((grid.t[i], x_t.detach().clone(), x0.detach().clone()))
        return x0

    with torch.no_grad():
        x = step_fn(model, x, grid, noise, **method_options)
    bar.close()
    if mask is not None:
        x = torch.where(mask > 0, known, x)
    if not trajectory_every:
        return x
    snapshots.append((0.0, x, x))
    traj = Trajectory(
        t=torch.tensor([s[0] for s in snapshots]),
        x_t=torch.stack([s[1] for s in snapshots]),
        x0_hat=torch.stack([s[2] for s in snapshots]),
    )
    return x, traj


def _infer_device(*candidates) -> torch.device:
    for c in candidates:
        if isinstance(c, Tensor):
            return c.device
        if isinstance(c, dict):
            for v in c.values():
                if isinstance(v, Tensor):
                    return v.device
    return torch.device("cpu")
