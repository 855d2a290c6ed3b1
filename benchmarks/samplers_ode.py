"""Solver accuracy apart from the noise draw: ours (tuned grids included) against diffusers on the 2-D and
16-D mixtures at 5, 10 and 20 NFE.

``benchmarks/samplers.py`` scores every sampler by the Frechet distance (FD) of its samples to the
true mixture, from one draw of initial noise. At 20 NFE in 2-D that distance is dominated by the
draw: the exact solution of the sampling ODE from the same noise (2,000 steps) lands at about the
same FD as every good 20-NFE solver, so a difference of a few percent there says nothing about the
solvers. This script separates the two:

- **distance to the ODE solution**: the mean per-sample distance between a solver's samples and the
  exact ODE solution from the same noise (ours at 2,000 steps; diffusers' DPM++2M at 999 steps lands
  on the same points), which is the solver's own error;
- **FD over several draws**: the mean FD to the true mixture over ``--draws`` disjoint noise draws.

Both are averaged over the draws.

    python benchmarks/samplers_ode.py

Writes benchmarks/results/samplers_ode.md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import samplers as bench  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402
from toolkit.core import schedule  # noqa: E402
from toolkit.core.mixture import GaussianMixture  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "samplers_ode.md"
OURS = ("unipc", "dpmpp_2m", "dpmpp_3m")
PEERS = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
EXACT_STEPS = 2000


def solvers(gm: GaussianMixture, sched, n: int, dim: int, nfe: int, seed: int, grids: dict) -> dict[str, torch.Tensor]:
    """Every solver's samples at ``nfe`` evaluations from the noise of ``seed``; ``grids``: our tuned
    grids by method."""
    denoiser, noise = gm.denoiser(sched), bench.initial_noise(n, dim, seed)
    out = {f"ours: {m}": bench.run_ours(m, nfe, denoiser, sched, n, dim, seed=seed) for m in OURS}
    for method, grid in grids.items():
        out[f"ours: {method}, tuned"] = bench.run_ours(
            method, grid.steps, denoiser, sched, n, dim, times=grid.times, seed=seed
        )
    for config in (c for name in PEERS for c in bench.PEER_CONFIGS[name] if c.spacing != "leading"):
        steps, _ = bench.steps_for_nfe(lambda s, c=config: bench.peer_evaluations(c, s), nfe)
        out[f"diffusers: {config.name}"] = bench.run_peer(config, steps, bench.mixture_vp_denoiser(gm), noise)
    return out


@dataclass
class Measured:
    """Per (solver, NFE): the mean distance to the exact ODE solution and the mean FD over the draws."""

    dim: int
    nfes: Sequence[int]
    distance: dict[tuple[str, int], float]
    fd: dict[tuple[str, int], float]
    exact_fd: float

    def names(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.distance))

    def rows(self) -> list[list[str]]:
        rows = []
        for name in self.names():
            cells = [name]
            for nfe in self.nfes:
                cells += [f"{self.distance[(name, nfe)]:.4f}", f"{self.fd[(name, nfe)]:.5f}"]
            rows.append(cells)
        return rows

    def findings(self) -> list[str]:
        """Per NFE, our best solver against diffusers' best, by each measure."""
        lines = []
        for nfe in self.nfes:
            parts = []
            for label, values, digits in (("distance to the ODE", self.distance, 4), ("mean FD", self.fd, 5)):
                best = {
                    side: min((v, name) for (name, k), v in values.items() if k == nfe and name.startswith(side))
                    for side in ("ours", "diffusers")
                }
                (ours, our_name), (theirs, their_name) = best["ours"], best["diffusers"]
                verdict = "ours at or below" if ours <= theirs else f"ours {ours / theirs:.2f}x theirs"
                parts.append(
                    f"{label}: {our_name[6:]} {ours:.{digits}f} vs {their_name[11:]} {theirs:.{digits}f} ({verdict})"
                )
            lines.append(f"- {self.dim}-D, {nfe} NFE: " + "; ".join(parts))
        return lines


def measure(dim: int, n: int, nfes: Sequence[int], draws: int, tuned: Sequence[str] = bench.TUNED) -> Measured:
    gm, sched = GaussianMixture.random(dim, 3, seed=dim), schedule.get("linear")
    grids = {nfe: {method: bench.tuned_grid(gm, sched, dim, method, nfe) for method in tuned} for nfe in nfes}
    distance: dict[tuple[str, int], list[float]] = {}
    fd: dict[tuple[str, int], list[float]] = {}
    exact_fds = []
    for draw in range(draws):
        seed = bench.SEED + draw * n  # disjoint seeds per draw; draw 0 is samplers.py's noise
        exact = bench.run_ours("dpmpp_2m", EXACT_STEPS, gm.denoiser(sched), sched, n, dim, seed=seed)
        exact_fds.append(bench.errors(gm, exact)[0])
        for nfe in nfes:
            for name, x in solvers(gm, sched, n, dim, nfe, seed, grids[nfe]).items():
                fd.setdefault((name, nfe), []).append(bench.errors(gm, x)[0])
                distance.setdefault((name, nfe), []).append((x - exact).norm(dim=1).mean().item())
    mean = {key: statistics.mean(values) for key, values in fd.items()}
    return Measured(dim, nfes, {k: statistics.mean(v) for k, v in distance.items()}, mean, statistics.mean(exact_fds))


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--n", type=int, default=bench.SAMPLES, help="samples per draw")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--draws", type=int, default=5, help="noise draws averaged in both measures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.draws < 1 or args.n < 2 or any(nfe < 1 for nfe in args.nfe) or any(d < 1 for d in args.dims):
        parser.error("--draws >= 1, --n >= 2, every --nfe >= 1 and every --dims >= 1 are needed")
    torch.set_num_threads(1)
    started, cpu = time.time(), time.process_time()
    load_before = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the few-steps advice
        results = [measure(dim, args.n, args.nfe, args.draws) for dim in args.dims]
    header = ["solver"] + [h for nfe in args.nfe for h in (f"distance to ODE, {nfe} NFE", f"mean FD, {nfe} NFE")]
    body = [
        f"- Mixtures `GaussianMixture.random(d, 3, seed=d)` (d = {', '.join(map(str, args.dims))}), exact "
        f"denoiser, schedule linear, N = {args.n} per draw, {args.draws} disjoint noise draws (draw 0 is "
        "samplers.py's noise); both columns are means over the draws",
        f"- `tuned`: samplers.py's grids, tuned for that NFE on {bench.TUNE_DRAWS} other draws "
        f"(seed {bench.TUNE_SEED})",
        f"- Run time: {time.time() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU, 1 thread; load "
        f"average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} (other jobs shared 2 cores)",
        "- The distance column is the solver's own error; FD also holds the draw's sampling error, which the exact "
        "ODE solution shares (its mean FD is given per dimension): solvers whose FD sits near it are not told "
        "apart by FD",
        "",
        "## Findings (best of ours against diffusers' best, each measure on its own)",
        "",
        *[line for result in results for line in result.findings()],
    ]
    for result in results:
        body += [
            "",
            f"## {result.dim}-D (the exact ODE solution's mean FD: {result.exact_fd:.5f})",
            "",
            *markdown_table(header, result.rows()),
        ]
    path = write_results(
        args.out, "Samplers: solver error apart from the noise draw", "python benchmarks/samplers_ode.py", body
    )
    print("\n".join(body))
    return path


if __name__ == "__main__":
    main()
