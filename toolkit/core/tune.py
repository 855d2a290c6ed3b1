"""Time grids tuned to a denoiser: the N-step grid whose solution best matches a many-step one.

As in GITS (Chen et al. 2024) and Align Your Steps (Sabour et al. 2024): from a few hundred noise
draws, a reference solution on a fine grid of candidate times (uniform in logSNR from the
start down to noise level 0.002, then 0) records the state x_j and clean estimate x0_j at each
candidate. The cost of one first-order step from candidate j to k is the mean squared distance
of its result to the reference state x_k; dynamic programming picks the ``steps``-step path from
the start to clean data of least total cost. A few sweeps of coordinate descent then move each
inner time to a neighbouring candidate where the method itself (multistep, Heun...) lands closer
to the reference result; where the method's default grid still does better, it is kept.
Everything runs through ``sampler.sample``, so guidance and
conditioning are those of the runs the grid is for.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from toolkit.core import sampler
from toolkit.core import schedule as schedules
from toolkit.core.schedule import Schedule


@dataclass
class TunedGrid:
    """A tuned grid and its measured errors (root mean squared distance per element to the
    reference result on the tuning draws), next to the method's default grid at the same steps."""

    method: str
    steps: int
    nfe: int
    times: list[float]
    error: float
    default_error: float
    draws: int


def evaluations(method: str, steps: int) -> int:
    """Denoiser evaluations of ``steps`` steps: Heun makes two per step but one on the last."""
    return 2 * steps - 1 if method == "heun" else steps


def steps_for(method: str, nfe: int) -> int:
    """The most steps of ``method`` that fit in ``nfe`` evaluations."""
    steps = (nfe + 1) // 2 if method == "heun" else nfe
    if steps < 1:
        raise ValueError(f"nfe={nfe} is too few for {method}; give at least 1 (heun: 1)")
    return steps


def shortest_path(cost: Tensor, steps: int) -> list[int]:
    """Indices 0 = i_0 < i_1 < ... < i_steps = M of the least total ``cost[i_k, i_k+1]`` path
    through an [M+1, M+1] upper-triangular cost matrix, by dynamic programming."""
    m = cost.shape[0] - 1
    if not 1 <= steps <= m:
        raise ValueError(f"cannot make {steps} steps through {m + 1} candidate times")
    best = torch.full((steps + 1, m + 1), math.inf, dtype=torch.float64)
    parent = torch.zeros((steps + 1, m + 1), dtype=torch.long)
    best[0, 0] = 0.0
    upper = torch.triu(torch.ones(m + 1, m + 1, dtype=torch.bool), diagonal=1)
    step_cost = torch.where(upper, cost.double(), torch.full_like(cost.double(), math.inf))
    for s in range(1, steps + 1):
        total = best[s - 1][:, None] + step_cost  # [from, to]
        best[s], parent[s] = total.min(dim=0)
    path = [m]
    for s in range(steps, 0, -1):
        path.append(int(parent[s, path[-1]]))
    return path[::-1]


def tune(
    denoiser: Callable[..., Tensor],
    sample_shape: Sequence[int],
    schedule: Schedule | str,
    method: str,
    nfe: int,
    *,
    draws: int = 256,
    seed: int = 0,
    candidates: int = 96,
    refine: int = 2,
    reference_factor: int = 4,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **sample_options,
) -> TunedGrid:
    """The ``nfe``-evaluation grid for ``method`` that best matches a many-step solution.

    ``sample_options`` (``cond``, ``guidance``, ``uncond``, method options) go to every
    ``sampler.sample`` call; ``cond`` must hold one row per draw. ``candidates`` times (plus the
    final 0) are the choices; the reference takes ``reference_factor`` dpmpp_3m steps per candidate
    interval; ``refine`` sweeps of coordinate descent follow the dynamic programme."""
    sched = schedules.get(schedule)
    steps = steps_for(method, nfe)
    if candidates < steps + 1:
        raise ValueError(f"candidates={candidates} must exceed the {steps} steps to choose")
    shape = (draws, *(int(d) for d in sample_shape))
    common = dict(seed=seed, dtype=dtype, device=device, **sample_options)
    method_options = {k: v for k, v in sample_options.items() if k not in ("cond", "guidance", "uncond")}
    fine = schedules.timesteps(sched, (candidates - 1) * reference_factor + 1, "logsnr").tolist()
    ref_common = {k: v for k, v in common.items() if k not in method_options}
    final, traj = sampler.sample(
        denoiser, shape, sched, "dpmpp_3m", len(fine) - 1, times=fine, trajectory_every=reference_factor, **ref_common
    )
    times = fine[::reference_factor] + [0.0]
    states, estimates = traj.x_t[:candidates], traj.x0_hat[:candidates]
    alpha, sigma = (v.tolist() for v in sched.alpha_sigma(torch.tensor(times, dtype=torch.float64)))
    alpha[-1], sigma[-1] = 1.0, 0.0
    targets = torch.cat([states, final[None]])
    cost = torch.full((candidates + 1, candidates + 1), math.inf, dtype=torch.float64)
    for j in range(candidates):
        for k in range(j + 1, candidates + 1):
            step = (sigma[k] / sigma[j]) * states[j] + (alpha[k] - sigma[k] * alpha[j] / sigma[j]) * estimates[j]
            cost[j, k] = float((step - targets[k]).double().pow(2).mean())
    path = shortest_path(cost, steps)

    def error(grid_times: Sequence[float] | None) -> float:
        x = (
            sampler.sample(denoiser, shape, sched, method, steps, times=grid_times, **common)
            if grid_times is not None
            else sampler.sample(denoiser, shape, sched, method, steps, **common)
        )
        return float((x - final).double().pow(2).mean().sqrt())

    best = error([times[i] for i in path])
    for _ in range(refine):
        improved = False
        for pos in range(1, steps):
            for move in (-2, -1, 1, 2):
                trial = list(path)
                trial[pos] += move
                if not trial[pos - 1] < trial[pos] < trial[pos + 1]:
                    continue
                value = error([times[i] for i in trial])
                if value < best:
                    best, path, improved = value, trial, True
        if not improved:
            break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the few-steps warning: the default grid is measured on purpose
        default = error(None)
    chosen = [times[i] for i in path]
    if default < best:  # the candidates missed the default grid's times: keep the better grid
        chosen, best = _default_times(sched, method, steps), default
    return TunedGrid(method, steps, evaluations(method, steps), chosen, best, default, draws)


def _default_times(sched: Schedule, method: str, steps: int) -> list[float]:
    spacing, sigma_min = sampler.SAMPLERS[method].spacing, sampler.default_sigma_min(method, steps)
    return sampler.Grid.make(sched, steps, spacing, 1.0, sigma_min).t


def save_grid(path: str | Path, grid: TunedGrid) -> Path:
    """Add ``grid`` to the JSON file at ``path`` (replacing one for the same method and steps)."""
    path = Path(path)
    entries = json.loads(path.read_text())["grids"] if path.is_file() else []
    entries = [e for e in entries if (e["method"], e["steps"]) != (grid.method, grid.steps)] + [asdict(grid)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"grids": sorted(entries, key=lambda e: (e["method"], e["steps"]))}, indent=1))
    return path


def load_grid(path: str | Path, method: str, steps: int) -> list[float]:
    """The tuned times for ``method`` at ``steps`` steps from a file ``save_grid`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no tuned grid file {path}; make one with python -m toolkit.tune_steps ckpt=... nfe=..."
        )
    entries = json.loads(path.read_text())["grids"]
    for entry in entries:
        if entry["method"] == method and entry["steps"] == steps:
            return entry["times"]
    have = ", ".join(f"{e['method']} at {e['steps']} steps" for e in entries) or "none"
    raise ValueError(
        f"{path} has no tuned grid for {method} at {steps} steps (it has: {have}); run python -m "
        f"toolkit.tune_steps ckpt=... method={method} nfe={evaluations(method, steps)}"
    )
