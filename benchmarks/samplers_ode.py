"""Solver accuracy apart from the noise draw: ours against diffusers on the 2-D mixture at 10 and 20 NFE.

``benchmarks/samplers.py`` scores every sampler by the Frechet distance (FD) of its samples to the
true mixture, from one draw of initial noise. At 20 NFE in 2-D that distance is dominated by the
draw: the exact solution of the sampling ODE from the same noise (2,000 steps) lands at about the
same FD as every good 20-NFE solver, so a difference of a few percent there says nothing about the
solvers. This script separates the two:

- **distance to the ODE solution**: the mean per-sample distance between a solver's samples and the
  exact ODE solution from the same noise (ours at 2,000 steps; diffusers' DPM++2M at 999 steps lands
  on the same points), which is the solver's own error;
- **FD over several draws**: the mean FD to the true mixture over ``--draws`` disjoint noise draws.

    python benchmarks/samplers_ode.py

Writes benchmarks/results/samplers_ode.md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
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


def solvers(gm: GaussianMixture, sched, n: int, dim: int, nfe: int, seed: int) -> dict[str, torch.Tensor]:
    """Every solver's samples at ``nfe`` evaluations from the noise of ``seed``."""
    denoiser, noise = gm.denoiser(sched), bench.initial_noise(n, dim, seed)
    out = {f"ours: {m}": bench.run_ours(m, nfe, denoiser, sched, n, dim, seed=seed) for m in OURS}
    for config in (c for name in PEERS for c in bench._configs(name) if c.spacing != "leading"):
        steps, _ = bench.steps_for_nfe(lambda s, c=config: bench.peer_evaluations(c, s), nfe)
        out[f"diffusers: {config.name}"] = bench.run_peer(config, steps, bench.mixture_vp_denoiser(gm), noise)
    return out


def measure(dim: int, n: int, nfes: Sequence[int], draws: int) -> tuple[list[list[str]], str]:
    gm, sched = GaussianMixture.random(dim, 3, seed=dim), schedule.get("linear")
    distance: dict[tuple[str, int], float] = {}
    fd: dict[tuple[str, int], list[float]] = {}
    for draw in range(draws):
        seed = bench.SEED + draw * n  # disjoint seeds per draw; draw 0 is samplers.py's noise
        exact = bench.run_ours("dpmpp_2m", EXACT_STEPS, gm.denoiser(sched), sched, n, dim, seed=seed)
        fd.setdefault(("exact ODE solution", 0), []).append(bench.errors(gm, exact)[0])
        for nfe in nfes:
            for name, x in solvers(gm, sched, n, dim, nfe, seed).items():
                fd.setdefault((name, nfe), []).append(bench.errors(gm, x)[0])
                if draw == 0:
                    distance[(name, nfe)] = (x - exact).norm(dim=1).mean().item()
    names = [name for name, nfe in distance if nfe == nfes[0]]
    rows = []
    for name in names:
        cells = [name]
        for nfe in nfes:
            cells += [f"{distance[(name, nfe)]:.4f}", f"{statistics.mean(fd[(name, nfe)]):.5f}"]
        rows.append(cells)
    exact_fd = statistics.mean(fd[("exact ODE solution", 0)])
    rows.append(["exact ODE solution (2,000 steps)"] + ["0", f"{exact_fd:.5f}"] * len(nfes))
    return rows, f"{exact_fd:.5f}"


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--n", type=int, default=bench.SAMPLES, help="samples per draw")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--draws", type=int, default=5, help="noise draws for the FD column")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.draws < 1 or args.n < 2 or any(nfe < 1 for nfe in args.nfe):
        parser.error("--draws >= 1, --n >= 2 and every --nfe >= 1 are needed")
    torch.set_num_threads(1)
    started, cpu = time.time(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the few-steps advice
        rows, exact_fd = measure(args.dim, args.n, args.nfe, args.draws)
    header = ["solver"] + [h for nfe in args.nfe for h in (f"distance to ODE, {nfe} NFE", f"mean FD, {nfe} NFE")]
    body = [
        f"- {args.dim}-D mixture `GaussianMixture.random({args.dim}, 3, seed={args.dim})`, exact denoiser, schedule "
        f"linear, N = {args.n} per draw; distance: draw 0 (samplers.py's noise); mean FD: {args.draws} draws",
        f"- Run time: {time.time() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU, 1 thread",
        f"- The exact ODE solution's own mean FD is {exact_fd}: a solver cannot be told apart from another "
        "by FD when both sit at that level; the distance column measures the solver's error itself",
        "",
        *markdown_table(header, rows),
    ]
    path = write_results(
        args.out, "Samplers: solver error apart from the noise draw", "python benchmarks/samplers_ode.py", body
    )
    print("\n".join(body))
    return path


if __name__ == "__main__":
    main()
